// Package docs holds blmilter's manuals. The binary embeds the
// configuration reference, which "go generate ./config" writes from the
// code, so that "blmilter help config" prints it.
package docs

import _ "embed"

// ConfigReference is docs/config.md.
//
//go:embed config.md
var ConfigReference string
