package sockets

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// DirMode is the mode of a socket directory blmilter creates: the owner
// (blmilter's user) and the socket's group may enter it, nobody else.
const DirMode os.FileMode = 0o750

// PrepareDir creates the directory of the unix socket at path when it is
// missing: one level only (its parent must exist, so a typo does not
// build a tree), owned by the process's user, with DirMode and group (the
// process's group when ""). An existing directory is left as it is;
// Access says whether it will do.
func PrepareDir(path, group string) error {
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	if err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("unix:%s: %s is not a directory", path, dir)
		}
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("unix:%s: %w", path, err)
	}
	if _, err := os.Stat(filepath.Dir(dir)); err != nil {
		return fmt.Errorf("unix:%s: cannot create the socket's directory %s: %w", path, dir, err)
	}
	if err := os.Mkdir(dir, DirMode); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("unix:%s: create the socket's directory: %w", path, err)
	}
	if group != "" {
		gid, err := LookupGroup(group)
		if err != nil {
			return err
		}
		if err := os.Chown(dir, -1, gid); err != nil {
			return fmt.Errorf("unix:%s: set group %s of %s: %w", path, group, dir, err)
		}
	}
	// Mkdir's mode went through the umask.
	if err := os.Chmod(dir, DirMode); err != nil {
		return fmt.Errorf("unix:%s: set mode of %s: %w", path, dir, err)
	}
	return nil
}

// Access reports why a process of group cannot connect to the unix socket
// at path, or nil when it can: every directory from / down must be
// searchable and the socket writable, through the group's bits, the
// others' bits, or the owner's bits when the owner is a member of the
// group (Postfix's private/ belongs to the postfix user).
//
// What does not exist yet is judged as blmilter will make it: a missing
// socket with mode and the group, a missing directory with DirMode and
// the group. So Access can check a config before the daemon starts.
func Access(path, group string, mode os.FileMode) error {
	gid, err := LookupGroup(group)
	if err != nil {
		return err
	}
	members := groupMembers(gid)
	canSearch := func(fi fs.FileInfo) bool { return allows(fi.Mode(), owner(fi), gidOf(fi), gid, members, 0o1) }
	path = filepath.Clean(path)
	var problems []string
	for _, dir := range dirsOf(path) {
		fi, err := os.Stat(dir)
		if errors.Is(err, fs.ErrNotExist) {
			// PrepareDir makes the socket's own directory; nothing makes
			// the ones above it.
			if dir != filepath.Dir(path) {
				problems = append(problems, fmt.Sprintf("directory %s does not exist", dir))
			}
			break
		}
		if err != nil {
			problems = append(problems, err.Error())
			break
		}
		if !canSearch(fi) {
			problems = append(problems, fmt.Sprintf("directory %s (%s, owner %d, group %d) is not searchable by group %s",
				dir, fi.Mode().Perm(), owner(fi), gidOf(fi), group))
		}
	}
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if !allows(mode, os.Getuid(), gid, gid, members, 0o2) {
			problems = append(problems, fmt.Sprintf("socket mode %#o gives group %s no write access", mode.Perm(), group))
		}
	case err != nil:
		problems = append(problems, err.Error())
	case !allows(fi.Mode(), owner(fi), gidOf(fi), gid, members, 0o2):
		problems = append(problems, fmt.Sprintf("socket %s (%s, owner %d, group %d) is not writable by group %s", path, fi.Mode().Perm(), owner(fi), gidOf(fi), group))
	}
	if len(problems) > 0 {
		return fmt.Errorf("group %s cannot reach unix:%s: %s", group, path, strings.Join(problems, "; "))
	}
	return nil
}

// dirsOf lists the directories a process passes to reach path, from /.
func dirsOf(path string) []string {
	var dirs []string
	for d := filepath.Dir(path); ; d = filepath.Dir(d) {
		dirs = append([]string{d}, dirs...)
		if d == "/" || d == "." {
			return dirs
		}
	}
}

// allows reports whether a file with mode, owner uid and group fileGid
// grants bit (1 search, 2 write, as in the others' triplet) to group gid.
func allows(mode os.FileMode, uid, fileGid, gid int, members map[int]bool, bit os.FileMode) bool {
	perm := mode.Perm()
	return perm&bit != 0 ||
		fileGid == gid && perm&(bit<<3) != 0 ||
		members[uid] && perm&(bit<<6) != 0
}

func owner(fi fs.FileInfo) int {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid)
	}
	return -1
}

func gidOf(fi fs.FileInfo) int {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Gid)
	}
	return -1
}

// Where users and groups are read from; tests may point elsewhere.
var passwdFile, groupFile = "/etc/passwd", "/etc/group"

// groupMembers returns the uids of the users whose primary group is gid
// or who are listed as its members, from the local files (a user only a
// directory service knows is not found, which only makes Access stricter).
func groupMembers(gid int) map[int]bool {
	members := map[int]bool{}
	names := map[string]bool{}
	eachLine(groupFile, func(f []string) {
		if len(f) >= 4 && f[2] == strconv.Itoa(gid) {
			for _, n := range strings.Split(f[3], ",") {
				if n != "" {
					names[n] = true
				}
			}
		}
	})
	eachLine(passwdFile, func(f []string) {
		if len(f) < 4 {
			return
		}
		uid, err := strconv.Atoi(f[2])
		if err != nil {
			return
		}
		if f[3] == strconv.Itoa(gid) || names[f[0]] {
			members[uid] = true
		}
	})
	return members
}

func eachLine(path string, fn func(fields []string)) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		fn(strings.Split(line, ":"))
	}
}
