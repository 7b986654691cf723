package e2e

import "testing"

const envNetNS = "BLMILTER_E2E_NETNS"

func netnsMain(m *testing.M) int { return m.Run() }
