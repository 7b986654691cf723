package config

import (
	_ "embed"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

//go:embed default.toml
var defaultTOML []byte

// DefaultTOML returns the text of the embedded default configuration, a
// starting point for a config file.
func DefaultTOML() []byte { return slices.Clone(defaultTOML) }

// Default returns the embedded default configuration, parsed: what
// blmilter runs with when no config file is given. It panics if the
// embedded file is invalid, which a test rules out.
func Default() *Config {
	cfg, err := Parse(defaultTOML, "default.toml")
	if err != nil {
		panic(fmt.Sprintf("config: embedded default config is invalid: %v", err))
	}
	return cfg
}

// LoadFile reads and parses a config file. Relative paths of list files
// and key files are taken relative to the config file's directory.
func LoadFile(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	cfg, err := Parse(data, path)
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(path)
	abs := func(f *string) {
		if *f != "" && !filepath.IsAbs(*f) {
			*f = filepath.Join(dir, *f)
		}
	}
	for i := range cfg.Lists {
		abs(&cfg.Lists[i].File)
	}
	abs(&cfg.Zone.TSIG.SecretFile)
	abs(&cfg.Fleet.KeyFile)
	for i := range cfg.Fleet.PreviousKeyFiles {
		abs(&cfg.Fleet.PreviousKeyFiles[i])
	}
	return cfg, nil
}

// Problem is one thing wrong in a config file.
type Problem struct {
	Key  string // full key, such as "list[2].weight"; "" for the file as a whole
	Line int    // 1-based; 0 when not known
	Msg  string
}

// Error lists every problem found in a config file.
type Error struct {
	File     string
	Problems []Problem
}

func (e *Error) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.File)
		if p.Line > 0 {
			fmt.Fprintf(&b, ":%d", p.Line)
		}
		b.WriteString(": ")
		if p.Key != "" {
			b.WriteString(p.Key)
			b.WriteString(": ")
		}
		b.WriteString(p.Msg)
	}
	return b.String()
}

// Errorf is a problem with key found after parsing (a list file that
// cannot be read, say), with the key's line when the file has it.
func (c *Config) Errorf(key, format string, args ...any) *Error {
	p := &parser{lines: c.lines}
	p.addf(key, format, args...)
	return &Error{File: c.File, Problems: p.problems}
}

// parser collects the problems of one file, mox addErrorf style, so the
// admin sees all of them at once.
type parser struct {
	md       *toml.MetaData
	lines    map[string]int
	set      map[string]bool // keys present in the file; nil for a config built in code
	problems []Problem
}

func (p *parser) addf(key, format string, args ...any) {
	p.problems = append(p.problems, Problem{Key: key, Line: p.line(key), Msg: fmt.Sprintf(format, args...)})
}

// line finds the line of key, or of the nearest enclosing key the scanner
// saw (a value inside an inline table is on its table's line).
func (p *parser) line(key string) int {
	for key != "" {
		if n, ok := p.lines[key]; ok {
			return n
		}
		key = parentKey(key)
	}
	return 0
}

// Parse parses and validates a config. Every problem is reported in one
// *Error; keys left out get their defaults.
func Parse(data []byte, filename string) (*Config, error) {
	if filename == "" {
		filename = "config"
	}
	var top map[string]toml.Primitive
	md, err := toml.Decode(string(data), &top)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, &Error{File: filename, Problems: []Problem{{Key: pe.LastKey, Line: pe.Position.Line, Msg: pe.Message}}}
		}
		return nil, &Error{File: filename, Problems: []Problem{{Msg: err.Error()}}}
	}
	p := &parser{md: &md, lines: scanLines(string(data)), set: map[string]bool{}}
	cfg := Defaults()
	p.decodeTable(top, reflect.ValueOf(&cfg).Elem(), "")
	cfg.File = filename
	cfg.lines = p.lines
	p.validate(&cfg)
	if len(p.problems) > 0 {
		return nil, p.err(filename)
	}
	return &cfg, nil
}

// Validate checks a config built or changed in code, as Parse checks a
// file, and parses its networks and codes. Zero values that have a
// default (a list's category, timeout, on_error) are filled in.
func (c *Config) Validate() error {
	p := &parser{lines: c.lines}
	p.validate(c)
	if len(p.problems) > 0 {
		return p.err(c.File)
	}
	return nil
}

// err sorts the problems by line (those without one last) into an *Error.
func (p *parser) err(filename string) *Error {
	slices.SortStableFunc(p.problems, func(a, b Problem) int {
		la, lb := a.Line, b.Line
		if la == 0 {
			la = int(^uint(0) >> 1)
		}
		if lb == 0 {
			lb = int(^uint(0) >> 1)
		}
		return la - lb
	})
	return &Error{File: filename, Problems: p.problems}
}

var durationType = reflect.TypeFor[Duration]()

// decodeTable decodes one table key by key, so a bad value spoils only its
// own key and an unknown key is named with its full path.
func (p *parser) decodeTable(prims map[string]toml.Primitive, rv reflect.Value, path string) {
	t := rv.Type()
	fields := map[string]int{}
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("toml")
		if !f.IsExported() || tag == "" || tag == "-" {
			continue
		}
		fields[tag] = i
	}
	keys := make([]string, 0, len(prims))
	for k := range prims {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		key := joinKey(path, k)
		i, ok := fields[k]
		if !ok {
			p.addf(key, "unknown key%s", suggest(k, fields))
			continue
		}
		p.set[key] = true
		p.decodeValue(prims[k], rv.Field(i), key)
	}
}

func (p *parser) decodeValue(prim toml.Primitive, fv reflect.Value, key string) {
	switch {
	case fv.Kind() == reflect.Struct && fv.Type() != durationType:
		var sub map[string]toml.Primitive
		if err := p.md.PrimitiveDecode(prim, &sub); err != nil {
			p.addf(key, "must be a table ([%s])", key)
			return
		}
		p.decodeTable(sub, fv, key)
	case fv.Kind() == reflect.Slice && fv.Type().Elem().Kind() == reflect.Struct:
		var arr []toml.Primitive
		if err := p.md.PrimitiveDecode(prim, &arr); err != nil {
			p.addf(key, "must be an array of tables ([[%s]])", key)
			return
		}
		fv.Set(reflect.MakeSlice(fv.Type(), len(arr), len(arr)))
		for i, el := range arr {
			ekey := fmt.Sprintf("%s[%d]", key, i)
			var sub map[string]toml.Primitive
			if err := p.md.PrimitiveDecode(el, &sub); err != nil {
				p.addf(ekey, "must be a table")
				continue
			}
			p.decodeTable(sub, fv.Index(i), ekey)
		}
	default:
		// Decode into a fresh value so a failed decode leaves the default.
		nv := reflect.New(fv.Type())
		if err := p.md.PrimitiveDecode(prim, nv.Interface()); err != nil {
			p.addf(key, "%s", typeMessage(err, fv.Type()))
			return
		}
		fv.Set(nv.Elem())
	}
}

func typeMessage(err error, t reflect.Type) string {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		return pe.Message
	}
	if t == durationType {
		return "must be a duration string such as \"1.5s\""
	}
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "must be a string"
	case reflect.Bool:
		return "must be true or false"
	case reflect.Int, reflect.Int64, reflect.Int32:
		return "must be an integer"
	case reflect.Float64, reflect.Float32:
		return "must be a number"
	case reflect.Slice:
		if t.Elem().Kind() == reflect.String {
			return "must be an array of strings"
		}
		return "must be an array"
	case reflect.Map:
		return "must be a table"
	}
	return err.Error()
}

// suggest offers the known key closest to a misspelt one.
func suggest(k string, fields map[string]int) string {
	best, bestD := "", 3
	for f := range fields {
		if d := editDistance(k, f); d < bestD || (d == bestD && best != "" && f < best) {
			best, bestD = f, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// joinKey appends one segment to a dotted key, quoting it as TOML would.
func joinKey(parent, seg string) string {
	if !isBareKey(seg) {
		seg = strconv.Quote(seg)
	}
	if parent == "" {
		return seg
	}
	return parent + "." + seg
}

func isBareKey(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// parentKey strips the last segment or array index of a key built by joinKey.
func parentKey(key string) string {
	if strings.HasSuffix(key, "]") {
		if i := strings.LastIndexByte(key, '['); i >= 0 {
			return key[:i]
		}
	}
	if strings.HasSuffix(key, `"`) {
		// A quoted segment: find its opening quote.
		for i := len(key) - 2; i >= 0; i-- {
			if key[i] == '"' && (i == 0 || key[i-1] == '.') {
				if i == 0 {
					return ""
				}
				return key[:i-1]
			}
		}
		return ""
	}
	if i := strings.LastIndexByte(key, '.'); i >= 0 {
		return key[:i]
	}
	return ""
}

// scanLines finds the line of each table header and key in a TOML text,
// naming them as decodeTable does ("list[1].codes"). The TOML decoder keeps
// key positions to itself, so this light scan recovers them for messages;
// it only has to be right for files the decoder accepted.
func scanLines(data string) map[string]int {
	lines := map[string]int{}
	arrays := map[string]int{} // array-of-tables key -> elements so far
	resolve := func(segs []string) string {
		cur := ""
		for _, s := range segs {
			cur = joinKey(cur, s)
			if n := arrays[cur]; n > 0 {
				cur = fmt.Sprintf("%s[%d]", cur, n-1)
			}
		}
		return cur
	}
	record := func(key string, n int) {
		if _, ok := lines[key]; !ok {
			lines[key] = n
		}
	}
	table := ""
	inMulti := ""
	for i, raw := range strings.Split(data, "\n") {
		n := i + 1
		s := strings.TrimSpace(raw)
		if inMulti != "" {
			if strings.Count(s, inMulti)%2 == 1 {
				inMulti = ""
			}
			continue
		}
		if s == "" || s[0] == '#' {
			continue
		}
		if strings.HasPrefix(s, "[[") {
			segs, _, ok := scanKey(s[2:], "]]")
			if !ok || len(segs) == 0 {
				continue
			}
			base := joinKey(resolve(segs[:len(segs)-1]), segs[len(segs)-1])
			arrays[base]++
			table = fmt.Sprintf("%s[%d]", base, arrays[base]-1)
			record(base, n)
			record(table, n)
			continue
		}
		if s[0] == '[' {
			segs, _, ok := scanKey(s[1:], "]")
			if !ok {
				continue
			}
			table = resolve(segs)
			record(table, n)
			continue
		}
		segs, rest, ok := scanKey(s, "=")
		if !ok {
			continue
		}
		full := table
		for _, seg := range segs {
			full = joinKey(full, seg)
			record(full, n)
		}
		rest = strings.TrimSpace(rest)
		for _, q := range []string{`"""`, `'''`} {
			if strings.HasPrefix(rest, q) && strings.Count(rest, q)%2 == 1 {
				inMulti = q
			}
		}
	}
	return lines
}

// scanKey reads a dotted key (bare, "quoted" or 'literal' segments) up to
// term and returns the segments and the text after term.
func scanKey(s, term string) (segs []string, rest string, ok bool) {
	for {
		s = strings.TrimLeft(s, " \t")
		if s == "" {
			return nil, "", false
		}
		switch s[0] {
		case '"':
			end := 1
			for end < len(s) && s[end] != '"' {
				if s[end] == '\\' {
					end++
				}
				end++
			}
			if end >= len(s) {
				return nil, "", false
			}
			v, err := strconv.Unquote(s[:end+1])
			if err != nil {
				return nil, "", false
			}
			segs = append(segs, v)
			s = s[end+1:]
		case '\'':
			end := strings.IndexByte(s[1:], '\'')
			if end < 0 {
				return nil, "", false
			}
			segs = append(segs, s[1:end+1])
			s = s[end+2:]
		default:
			end := 0
			for end < len(s) && isBareKey(s[end:end+1]) {
				end++
			}
			if end == 0 {
				return nil, "", false
			}
			segs = append(segs, s[:end])
			s = s[end:]
		}
		s = strings.TrimLeft(s, " \t")
		if strings.HasPrefix(s, term) {
			return segs, s[len(term):], true
		}
		if !strings.HasPrefix(s, ".") {
			return nil, "", false
		}
		s = s[1:]
	}
}
