package policy

// MaxCategoryLen bounds a category's length.
const MaxCategoryLen = 64

// IsCategory reports whether s is a category: one word of a-z, 0-9 and
// '-', so it reads well in replies, logs and URLs (/help/zombie) and can
// carry no markup or line break. Every place a category enters blmilter
// (the config file, the command line, the admin API, the store) checks it.
func IsCategory(s string) bool {
	if s == "" || len(s) > MaxCategoryLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
