package config

import (
	"flag"
	"fmt"
	"go/ast"
	goparser "go/parser"
	"go/token"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unicode"
)

var update = flag.Bool("update", false, "rewrite docs/config.md from the code (go generate ./config)")

const referencePath = "../docs/config.md"

// TestReference keeps docs/config.md what the code says: every key, its
// type, its default from Defaults, whether a reload applies it and its
// meaning from the field's doc comment. "go generate ./config" rewrites it.
func TestReference(t *testing.T) {
	docs := fieldDocs(t)
	got := reference(docs)
	if *update {
		if err := os.WriteFile(referencePath, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(referencePath)
	if err != nil {
		t.Fatalf("%v: run go generate ./config", err)
	}
	if string(want) != got {
		gl, wl := strings.Split(got, "\n"), strings.Split(string(want), "\n")
		for i := range max(len(gl), len(wl)) {
			var g, w string
			if i < len(gl) {
				g = gl[i]
			}
			if i < len(wl) {
				w = wl[i]
			}
			if g != w {
				t.Fatalf("docs/config.md differs from the code at line %d:\n  file: %q\n  code: %q\nrun go generate ./config", i+1, w, g)
			}
		}
	}
}

// Every setting has a doc comment to show.
func TestEverySettingDocumented(t *testing.T) {
	docs := fieldDocs(t)
	for _, k := range Keys() {
		owner := ownerOf(k)
		if strings.TrimSpace(docs[owner+"."+k.Field.Name]) == "" {
			t.Errorf("%s (%s.%s) has no doc comment", k.Name, owner, k.Field.Name)
		}
	}
}

// The embedded default config passes validation, and each key it sets is
// the default unless it is meant to differ.
func TestDefaultTOMLMatchesDefaults(t *testing.T) {
	cfg, err := Parse(DefaultTOML(), "default.toml")
	if err != nil {
		t.Fatal(err)
	}
	deliberate := map[string]string{} // key -> why default.toml differs from Defaults
	d := Defaults()
	diff(reflect.ValueOf(&d).Elem(), reflect.ValueOf(cfg).Elem(), "", func(key, _ string, a, b reflect.Value) {
		if strings.HasPrefix(key, "list[") {
			return // the lists are the example, not defaults
		}
		if _, ok := deliberate[key]; !ok {
			t.Errorf("default.toml sets %s = %s, but its default is %s", key, format(b), format(a))
		}
	})
	// And every key it names is one blmilter knows (Parse would refuse an
	// unknown one), so a comment there cannot describe a key that is gone.
	for key := range cfg.lines {
		if strings.HasPrefix(key, "list") {
			continue
		}
		if !strings.Contains(key, ".") {
			continue // a section header
		}
		found := false
		for _, k := range Keys() {
			if k.Name == key {
				found = true
			}
		}
		if !found {
			t.Errorf("default.toml names %s, which is no setting", key)
		}
	}
}

// fieldDocs reads the doc comments of the config structs from the source:
// "MilterConfig.Listen" -> its comment, "MilterConfig" -> the type's.
func fieldDocs(t *testing.T) map[string]string {
	t.Helper()
	fset := token.NewFileSet()
	f, err := goparser.ParseFile(fset, "config.go", nil, goparser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	docs := map[string]string{}
	for _, decl := range f.Decls {
		gd, ok := decl.(*ast.GenDecl)
		if !ok || gd.Tok != token.TYPE {
			continue
		}
		for _, spec := range gd.Specs {
			ts := spec.(*ast.TypeSpec)
			st, ok := ts.Type.(*ast.StructType)
			if !ok {
				continue
			}
			doc := ts.Doc
			if doc == nil {
				doc = gd.Doc
			}
			docs[ts.Name.Name] = doc.Text()
			for _, fld := range st.Fields.List {
				for _, n := range fld.Names {
					docs[ts.Name.Name+"."+n.Name] = fld.Doc.Text()
				}
			}
		}
	}
	return docs
}

// ownerOf is the name of the struct type that declares k's field.
func ownerOf(k Key) string {
	var find func(t reflect.Type) string
	find = func(t reflect.Type) string {
		for i := range t.NumField() {
			f := t.Field(i)
			if f.Name == k.Field.Name && f.Tag == k.Field.Tag {
				return t.Name()
			}
			ft := f.Type
			if isSectionList(ft) {
				ft = ft.Elem()
			}
			if isSection(ft) {
				if n := find(ft); n != "" {
					return n
				}
			}
		}
		return ""
	}
	return find(reflect.TypeFor[Config]())
}

// reference renders docs/config.md.
func reference(docs map[string]string) string {
	var b strings.Builder
	b.WriteString(`# Configuration reference

<!-- Generated from config/config.go by "go generate ./config"; do not edit. -->

blmilter reads one TOML file, named with ` + "`-config FILE`" + `; without one it runs on
the embedded default (` + "`config/default.toml`" + `, a starting point for a file of your
own). Every key may be left out and then has the default shown here; only
one ` + "`[[list]]`" + ` is needed. ` + "`blmilter config check FILE`" + ` reports every problem at
once, one a line, as ` + "`file:line: key: problem`" + `, and
` + "`blmilter help config`" + ` prints this page.

Reload: **live** means a SIGHUP applies a new value; **restart** means the
running daemon keeps the value it started with, and every SIGHUP logs a
warning naming the key until blmilter restarts.

Durations are strings such as "1.5s", "2m", "1h" or "90d". Every number and
duration has an upper bound, so a value that passes ` + "`config check`" + ` runs.
`)
	d := Defaults()
	renderSection(&b, docs, reflect.ValueOf(d), "")
	return b.String()
}

func renderSection(b *strings.Builder, docs map[string]string, v reflect.Value, prefix string) {
	t := v.Type()
	var subs []func()
	for _, f := range fileFields(t, prefix) {
		full := f.key
		switch {
		case isSection(f.Type):
			subs = append(subs, func() {
				fmt.Fprintf(b, "\n## [%s]\n\n", full)
				writeText(b, sectionDoc(docs[f.Type.Name()]))
				renderSection(b, docs, v.Field(f.index), full)
			})
		case isSectionList(f.Type):
			subs = append(subs, func() {
				fmt.Fprintf(b, "\n## [[%s]]\n\n", full)
				writeText(b, sectionDoc(docs[f.Type.Elem().Name()]))
				renderSection(b, docs, sampleList(), full)
			})
		default:
			fmt.Fprintf(b, "- **`%s`**: %s, default `%s`, reload: %s.\n", f.Tag.Get("toml"), typeName(f.Type), defaultText(v.Field(f.index)), f.Tag.Get("reload"))
			writeIndented(b, docs[t.Name()+"."+f.Name])
		}
	}
	for _, s := range subs {
		s()
	}
}

// sampleList is a DNS list with the defaults a [[list]] gets under the
// default config.
func sampleList() reflect.Value {
	c := Defaults()
	c.Lists = []ListConfig{{}}
	listDefaults(&c, 0, func(string) bool { return false })
	return reflect.ValueOf(c.Lists[0])
}

// sectionDoc turns "MilterConfig is the [milter] section: the milter for
// Postfix." into "The milter for Postfix.", and "ListConfig is one [[list]]
// section: a DNS list ..." into "A DNS list ...".
func sectionDoc(doc string) string {
	if _, rest, ok := strings.Cut(doc, " section"); ok && (strings.Contains(doc[:len(doc)-len(rest)], " is the ") || strings.Contains(doc[:len(doc)-len(rest)], " is one ")) {
		rest = strings.TrimLeft(rest, ":. \n")
		if rest == "" {
			return ""
		}
		r := []rune(rest)
		r[0] = unicode.ToUpper(r[0])
		return string(r)
	}
	return doc
}

func typeName(t reflect.Type) string {
	if t == durationType {
		return "duration"
	}
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int64:
		return "integer"
	case reflect.Float64:
		return "number"
	case reflect.Slice:
		return "array of " + typeName(t.Elem()) + "s"
	case reflect.Map:
		return "table"
	}
	return t.String()
}

func defaultText(v reflect.Value) string {
	if v.Kind() == reflect.Map {
		if m, ok := v.Interface().(map[string]string); ok && len(m) > 0 {
			keys := make([]string, 0, len(m))
			for k := range m {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			var parts []string
			for _, k := range keys {
				parts = append(parts, fmt.Sprintf("%s = %q", joinKey("", k), m[k]))
			}
			return "{ " + strings.Join(parts, ", ") + " }"
		}
		return "{}"
	}
	return format(v)
}

// writeText writes a doc comment as one paragraph.
func writeText(b *strings.Builder, doc string) {
	if doc = strings.Join(strings.Fields(doc), " "); doc != "" {
		b.WriteString(wrap(doc, "") + "\n\n")
	}
}

// writeIndented writes a key's doc under its bullet.
func writeIndented(b *strings.Builder, doc string) {
	if doc = strings.Join(strings.Fields(doc), " "); doc != "" {
		b.WriteString(wrap(doc, "  ") + "\n")
	}
}

// wrap fills text into lines of at most 80 columns, each with indent.
func wrap(text, indent string) string {
	var b strings.Builder
	line := indent
	for _, w := range strings.Fields(text) {
		if len(line) > len(indent) && len(line)+1+len(w) > 80 {
			b.WriteString(line + "\n")
			line = indent
		}
		if len(line) > len(indent) {
			line += " "
		}
		line += w
	}
	b.WriteString(line)
	return b.String()
}
