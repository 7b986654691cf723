package config

import (
	"slices"
	"testing"
)

// Every setting says whether a reload applies it, so a new setting cannot
// slip in that a SIGHUP silently ignores.
func TestEverySettingHasReloadMark(t *testing.T) {
	keys := Keys()
	if len(keys) < 60 {
		t.Fatalf("only %d settings found: the walk misses sections", len(keys))
	}
	for _, k := range keys {
		if k.Reload != ReloadLive && k.Reload != ReloadRestart {
			t.Errorf("%s (field %s): reload tag %q, want %q or %q", k.Name, k.Field.Name, k.Reload, ReloadLive, ReloadRestart)
		}
	}
	for _, want := range []string{"milter.read_timeout", "web.smtp.server", "list.zone", "list.codes", "store.decision_max_rows"} {
		if !slices.ContainsFunc(keys, func(k Key) bool { return k.Name == want }) {
			t.Errorf("%s not among the settings", want)
		}
	}
}

func TestRestartChanges(t *testing.T) {
	base := "[[list]]\nname = \"z\"\nzone = \"bl.example\"\n"
	running, err := Parse([]byte(base), "a.toml")
	if err != nil {
		t.Fatal(err)
	}
	next, err := Parse([]byte("[milter]\nread_timeout = \"3m\"\nsocket_group = \"postfix\"\n[log]\nlevel = \"debug\"\nformat = \"json\"\n[web]\nlookup_rate = 5\n"+base+"weight = 7\n"), "b.toml")
	if err != nil {
		t.Fatal(err)
	}
	got := RestartChanges(running, next)
	want := []Change{
		{Key: "milter.socket_group", Old: `""`, New: `"postfix"`},
		{Key: "milter.read_timeout", Old: `"2m"`, New: `"3m"`},
		{Key: "log.format", Old: `"text"`, New: `"json"`},
	}
	if !slices.Equal(got, want) {
		t.Errorf("RestartChanges:\n got %+v\nwant %+v", got, want)
	}
	if got := RestartChanges(running, running); len(got) != 0 {
		t.Errorf("a config against itself: %+v", got)
	}
}
