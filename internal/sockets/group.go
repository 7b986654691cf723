package sockets

import (
	"fmt"
	"os"
	"os/user"
	"strconv"
)

// SetGroup gives the unix socket at path the group named (or numbered) by
// group, so that the MTA's user can reach it through the socket's mode.
func SetGroup(path, group string) error {
	gid, err := LookupGroup(group)
	if err != nil {
		return err
	}
	if err := os.Chown(path, -1, gid); err != nil {
		return fmt.Errorf("set group %s of %s: %w", group, path, err)
	}
	return nil
}

// LookupGroup returns the id of a group name or number.
func LookupGroup(group string) (int, error) {
	if n, err := strconv.ParseUint(group, 10, 31); err == nil {
		return int(n), nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return 0, fmt.Errorf("socket group %q: %w", group, err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return 0, fmt.Errorf("socket group %q: id %q: %w", group, g.Gid, err)
	}
	return gid, nil
}
