package config

import (
	"fmt"
	"reflect"
)

// How a running daemon takes a changed setting, as each field's reload tag
// says.
const (
	// ReloadLive: a SIGHUP applies the new value.
	ReloadLive = "live"
	// ReloadRestart: the daemon keeps the old value until it restarts, and
	// a SIGHUP logs a warning naming the key.
	ReloadRestart = "restart"
)

// Change is a setting whose value differs between two configs.
type Change struct {
	Key      string // "milter.read_timeout", "list[2].zone"
	Old, New string // the values as a config file would write them
}

// RestartChanges returns the restart-only settings (reload:"restart") whose
// values differ between the running config and a new one, in the order of
// the struct fields. The reload tags decide, so a new setting is covered
// the moment it is declared.
func RestartChanges(running, next *Config) []Change {
	var out []Change
	diff(reflect.ValueOf(running).Elem(), reflect.ValueOf(next).Elem(), "", func(key, reload string, a, b reflect.Value) {
		if reload == ReloadRestart {
			out = append(out, Change{Key: key, Old: format(a), New: format(b)})
		}
	})
	return out
}

// diff calls changed for every leaf setting whose value differs. A leaf is
// a field with a toml key that is not a section (a Duration is a leaf).
func diff(a, b reflect.Value, prefix string, changed func(key, reload string, a, b reflect.Value)) {
	for _, f := range fileFields(a.Type(), prefix) {
		key := f.key
		fa, fb := a.Field(f.index), b.Field(f.index)
		switch {
		case isSection(f.Type):
			diff(fa, fb, key, changed)
		case isSectionList(f.Type):
			for j := range max(fa.Len(), fb.Len()) {
				ekey := fmt.Sprintf("%s[%d]", key, j)
				switch {
				case j >= fa.Len():
					diff(reflect.New(f.Type.Elem()).Elem(), fb.Index(j), ekey, changed)
				case j >= fb.Len():
					diff(fa.Index(j), reflect.New(f.Type.Elem()).Elem(), ekey, changed)
				default:
					diff(fa.Index(j), fb.Index(j), ekey, changed)
				}
			}
		default:
			if !reflect.DeepEqual(fa.Interface(), fb.Interface()) {
				changed(key, f.Tag.Get("reload"), fa, fb)
			}
		}
	}
}

// fileField is a field of a config struct that is in the file.
type fileField struct {
	reflect.StructField
	index int    // in the struct
	key   string // the full key: "milter.read_timeout", "list.zone"
}

// fileFields are the fields of struct type t that are in the file, in
// order, with their keys under prefix.
func fileFields(t reflect.Type, prefix string) []fileField {
	var out []fileField
	for i := range t.NumField() {
		f := t.Field(i)
		if key, ok := tomlKey(f); ok {
			out = append(out, fileField{StructField: f, index: i, key: joinKey(prefix, key)})
		}
	}
	return out
}

// tomlKey is a field's key; false for fields that are not in the file.
func tomlKey(f reflect.StructField) (string, bool) {
	tag := f.Tag.Get("toml")
	if !f.IsExported() || tag == "" || tag == "-" {
		return "", false
	}
	return tag, true
}

func isSection(t reflect.Type) bool { return t.Kind() == reflect.Struct && t != durationType }

func isSectionList(t reflect.Type) bool {
	return t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Struct
}

// format writes a value as a TOML file would.
func format(v reflect.Value) string {
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return "(default)"
		}
		v = v.Elem()
	}
	switch x := v.Interface().(type) {
	case Duration:
		return fmt.Sprintf("%q", x.String())
	case string:
		return fmt.Sprintf("%q", x)
	case []string:
		s := "["
		for i, e := range x {
			if i > 0 {
				s += ", "
			}
			s += fmt.Sprintf("%q", e)
		}
		return s + "]"
	}
	return fmt.Sprint(v.Interface())
}

// Key is one setting of the file, as the reference lists it.
type Key struct {
	Name   string // "milter.read_timeout"; a [[list]] key is "list.zone"
	Reload string // ReloadLive or ReloadRestart; "" when the field lacks its tag
	Field  reflect.StructField
}

// Keys lists every setting (every leaf field with a TOML key) in the order
// of the struct fields.
func Keys() []Key {
	var out []Key
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for _, f := range fileFields(t, prefix) {
			switch {
			case isSection(f.Type):
				walk(f.Type, f.key)
			case isSectionList(f.Type):
				walk(f.Type.Elem(), f.key)
			default:
				out = append(out, Key{Name: f.key, Reload: f.Tag.Get("reload"), Field: f.StructField})
			}
		}
	}
	walk(reflect.TypeFor[Config](), "")
	return out
}
