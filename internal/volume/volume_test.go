package volume

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"kiln.dev/kiln/internal/disk"
	"kiln.dev/kiln/internal/errdefs"
)

func needMkfs(t *testing.T) {
	t.Helper()
	if _, err := disk.FindTool("mkfs.ext4", "e2fsprogs"); err != nil {
		t.Skipf("%v: run scripts/setup", err)
	}
}

func TestStore(t *testing.T) {
	needMkfs(t)
	ctx := context.Background()
	root := t.TempDir()
	s, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	v, err := s.Create(ctx, "pgdata", 64, map[string]string{"team": "db"})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	st, err := os.Stat(v.Disk())
	if err != nil || st.Size() != 64<<20 {
		t.Fatalf("disk image: %v, size %v, want 64 MiB", err, st)
	}
	if u := v.UsedBytes(); u <= 0 || u >= 16<<20 {
		t.Errorf("UsedBytes %d: want a sparse image, some blocks allocated", u)
	}
	if out, err := exec.Command(mustTool(t, "dumpe2fs"), "-h", v.Disk()).CombinedOutput(); err == nil {
		if !strings.Contains(string(out), "Filesystem volume name:   kiln-volume") {
			t.Errorf("not the ext4 kiln made:\n%s", out)
		}
	}
	if _, err := s.Create(ctx, "pgdata", 0, nil); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("second Create: %v, want a conflict", err)
	}
	for _, bad := range []string{"a/b", "", ".x", "-x", "a b", strings.Repeat("a", 64)} {
		if _, err := s.Create(ctx, bad, 0, nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Create(%q): %v, want invalid", bad, err)
		}
	}
	for _, mib := range []int{1, 15, MaxSizeMiB + 1} {
		if _, err := s.Create(ctx, "sized", mib, nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Create size %d: %v, want invalid", mib, err)
		}
	}
	// Leftovers of an interrupted create or remove are not volumes.
	if err := os.Mkdir(filepath.Join(s.Dir(), ".new-x-123"), 0o700); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get("pgdata")
	if err != nil || got.SizeMiB != 64 || got.Created.IsZero() || got.Dir != filepath.Join(root, "volumes", "pgdata") || got.Labels["team"] != "db" {
		t.Errorf("Get: %+v, %v", got, err)
	}
	if _, err := s.Create(ctx, "another", 16, nil); err != nil {
		t.Fatal(err)
	}
	list, err := s.List()
	if err != nil || len(list) != 2 || list[0].Name != "another" || list[1].Name != "pgdata" {
		t.Errorf("List: %v, %v", list, err)
	}
	if err := s.Remove("pgdata"); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if _, err := s.Get("pgdata"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Get after Remove: %v, want not found", err)
	}
	if err := s.Remove("pgdata"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("second Remove: %v, want not found", err)
	}
	ents, _ := os.ReadDir(s.Dir())
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".rm-") {
			t.Errorf("left behind by Remove: %s", e.Name())
		}
	}
}

// Two creators of one name: exactly one wins, the other gets a conflict,
// and no temporary directory is left.
func TestCreateRace(t *testing.T) {
	needMkfs(t)
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.Create(context.Background(), "same", 16, nil)
		}()
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, errdefs.ErrConflict):
			t.Errorf("Create: %v", err)
		}
	}
	if won != 1 {
		t.Errorf("%d creators won, want 1", won)
	}
	ents, _ := os.ReadDir(s.Dir())
	if len(ents) != 1 || ents[0].Name() != "same" {
		t.Errorf("volume directory holds %v", ents)
	}
}

func mustTool(t *testing.T, name string) string {
	p, err := disk.FindTool(name, "e2fsprogs")
	if err != nil {
		t.Skip(err)
	}
	return p
}

// A volume whose record was torn (a crash mid-write on an older kiln, a
// disk error) does not hide the others from List; Get names what is wrong.
func TestTornRecordHidesNoOtherVolume(t *testing.T) {
	needMkfs(t)
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, n := range []string{"a", "b", "c"} {
		if _, err := s.Create(ctx, n, MinSizeMiB, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(s.Dir(), "b", metaFile), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	vs, err := s.List()
	if err != nil {
		t.Fatalf("List with one torn record: %v", err)
	}
	var names []string
	for _, v := range vs {
		names = append(names, v.Name)
	}
	if strings.Join(names, ",") != "a,c" {
		t.Errorf("List = %v, want a and c", names)
	}
	if _, err := s.Get("b"); err == nil || !strings.Contains(err.Error(), "volume b") {
		t.Errorf("Get of the torn volume: %v; want an error naming it", err)
	}
	if _, err := os.Stat(filepath.Join(s.Dir(), "b", DiskFile)); err != nil {
		t.Errorf("the torn volume's data is gone: %v", err)
	}
}
