package milter

import "strings"

// sendmailSafe doubles '%', which Sendmail's milter reply handling would
// otherwise read as a format directive (a reply with a lone '%' is replaced
// by Sendmail's own generic one).
func sendmailSafe(s string) string { return strings.ReplaceAll(s, "%", "%%") }
