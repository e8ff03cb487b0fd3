package state

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/internal/errdefs"
)

// openTest opens a fresh store in a temp dir and closes it with the test.
func openTest(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(path)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

// base is a fixed time with nanoseconds, so no assertion depends on the clock.
var base = time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)

func testVM(id, name string, created time.Time) *VM {
	return &VM{
		ID: id, Name: name, Spec: []byte(`{"program":"/bin/true"}`), Created: created,
		Desired: DesiredStopped, Status: StatusCreated,
	}
}

func insert(t *testing.T, s *Store, vms ...*VM) {
	t.Helper()
	for _, v := range vms {
		if err := s.InsertVM(context.Background(), v); err != nil {
			t.Fatalf("InsertVM(%s): %v", v.Name, err)
		}
	}
}

func TestOpenCreatesPrivateDatabase(t *testing.T) {
	_, path := openTest(t)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Mode().Perm(); got != 0o600 {
		t.Errorf("state database mode = %#o, want 0600", got)
	}
}

// The WAL holds the same data as the database until a checkpoint, so it
// must be as private as the database itself.
func TestOpenCompanionFilesArePrivate(t *testing.T) {
	s, path := openTest(t)
	insert(t, s, testVM("aaaa1111", "secret", base))
	matches, err := filepath.Glob(path + "*")
	if err != nil {
		t.Fatal(err)
	}
	var leaky []string
	for _, p := range matches {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm()&0o077 != 0 {
			leaky = append(leaky, filepath.Base(p)+" "+st.Mode().Perm().String())
		}
	}
	if len(leaky) > 0 {
		t.Fatalf("regression: Open chmods only the main file; SQLite made %v (group/other readable) before the chmod, and the WAL holds VM records", leaky)
	}
}

func TestOpenRefusesNonSQLiteFile(t *testing.T) {
	tests := []struct {
		name    string
		content string
	}{
		{"text", "this is not a database\nat all\n"},
		{"short", "SQLite"},
		{"almost magic", "SQLite format 4\x00 and more bytes here"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.db")
			if err := os.WriteFile(path, []byte(tt.content), 0o644); err != nil {
				t.Fatal(err)
			}
			s, err := Open(path)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded on a file that is not SQLite")
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("error %q does not wrap ErrInvalidArgument", err)
			}
			if !strings.Contains(err.Error(), "is not a SQLite database") {
				t.Errorf("error %q does not say the file is not a SQLite database", err)
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tt.content {
				t.Errorf("file content changed to %q, want %q", b, tt.content)
			}
			st, _ := os.Stat(path)
			if st.Mode().Perm() != 0o644 {
				t.Errorf("file mode changed to %#o", st.Mode().Perm())
			}
		})
	}
}

func TestOpenEmptyFileIsFreshDatabase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := Open(path)
	if err != nil {
		t.Fatalf("Open of an empty file: %v", err)
	}
	defer s.Close()
	vms, err := s.ListVMs(context.Background())
	if err != nil || len(vms) != 0 {
		t.Fatalf("ListVMs = %v, %v; want none", vms, err)
	}
}

func TestGetVM(t *testing.T) {
	s, _ := openTest(t)
	insert(t, s,
		testVM("abc123aa", "web", base),
		testVM("abc456bb", "db", base.Add(time.Second)),
		testVM("def789cc", "cache", base.Add(2*time.Second)),
		// A VM whose name is another VM's ID prefix: the name wins over
		// the prefix, and the full ID of a VM wins over a name.
		testVM("0123eeee", "def7", base.Add(3*time.Second)),
	)
	tests := []struct {
		ref    string
		wantID string
		want   error
	}{
		{ref: "abc123aa", wantID: "abc123aa"},
		{ref: "web", wantID: "abc123aa"},
		{ref: "cache", wantID: "def789cc"},
		{ref: "abc1", wantID: "abc123aa"},
		{ref: "abc4", wantID: "abc456bb"},
		{ref: "d", wantID: "def789cc"},
		{ref: "def7", wantID: "0123eeee"},
		{ref: "abc", want: errdefs.ErrConflict},
		{ref: "abc123aaff", want: errdefs.ErrNotFound},
		{ref: "ffff", want: errdefs.ErrNotFound},
		{ref: "nosuchvm", want: errdefs.ErrNotFound},
		{ref: "ABC1", want: errdefs.ErrNotFound},
		{ref: "", want: errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			v, err := s.GetVM(context.Background(), tt.ref)
			if tt.want != nil {
				if !errors.Is(err, tt.want) {
					t.Fatalf("GetVM(%q) = %v, %v; want error %v", tt.ref, v, err, tt.want)
				}
				if tt.ref != "" && !strings.Contains(err.Error(), tt.ref) {
					t.Errorf("error %q does not name %q", err, tt.ref)
				}
				return
			}
			if err != nil {
				t.Fatalf("GetVM(%q): %v", tt.ref, err)
			}
			if v.ID != tt.wantID {
				t.Errorf("GetVM(%q).ID = %s, want %s", tt.ref, v.ID, tt.wantID)
			}
		})
	}
}

func TestInsertVMConflicts(t *testing.T) {
	s, _ := openTest(t)
	insert(t, s, testVM("aaaa0001", "web", base))
	tests := []struct {
		name    string
		vm      *VM
		mention string
	}{
		{"duplicate name", testVM("bbbb0002", "web", base), `"web"`},
		{"duplicate ID", testVM("aaaa0001", "other", base), "aaaa0001"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.InsertVM(context.Background(), tt.vm)
			if !errors.Is(err, errdefs.ErrConflict) {
				t.Fatalf("InsertVM = %v, want ErrConflict", err)
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Errorf("error %q does not mention %s", err, tt.mention)
			}
		})
	}
	vms, err := s.ListVMs(context.Background())
	if err != nil || len(vms) != 1 {
		t.Fatalf("after conflicts ListVMs = %d VMs, %v; want 1", len(vms), err)
	}
}

func TestUpdateVMRoundTrip(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name   string
		update func(v *VM)
	}{
		{"every field set", func(v *VM) {
			v.Desired = DesiredRunning
			v.Status = StatusRunning
			v.PID = 4242
			v.ExitCode = 137
			v.Error = "boot failed: kernel panic"
			v.StartedAt = base.Add(time.Hour + 987654321)
			v.FinishedAt = base.Add(2*time.Hour + 1)
			v.RestartCount = 7
			v.BootUptime = 0.123456
		}},
		{"zero times stay zero", func(v *VM) {
			v.Status = StatusExited
			v.StartedAt = time.Time{}
			v.FinishedAt = time.Time{}
		}},
		{"local time zone", func(v *VM) {
			v.StartedAt = base.In(time.FixedZone("X", 5*3600+1800))
		}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := openTest(t)
			v := testVM("cafe000"+string(rune('0'+i)), "vm", base)
			insert(t, s, v)
			want := *v
			tt.update(&want)
			if err := s.UpdateVM(ctx, &want); err != nil {
				t.Fatalf("UpdateVM: %v", err)
			}
			got, err := s.GetVM(ctx, v.ID)
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct {
				field     string
				got, want time.Time
			}{
				{"Created", got.Created, want.Created},
				{"StartedAt", got.StartedAt, want.StartedAt},
				{"FinishedAt", got.FinishedAt, want.FinishedAt},
			} {
				if !c.got.Equal(c.want) || c.got.IsZero() != c.want.IsZero() {
					t.Errorf("%s = %v, want %v", c.field, c.got, c.want)
				}
			}
			// Compare the rest exactly, with the times taken out.
			got.Created, got.StartedAt, got.FinishedAt = time.Time{}, time.Time{}, time.Time{}
			want.Created, want.StartedAt, want.FinishedAt = time.Time{}, time.Time{}, time.Time{}
			if !reflect.DeepEqual(*got, want) {
				t.Errorf("GetVM after UpdateVM =\n %+v\nwant\n %+v", *got, want)
			}
		})
	}
}

func TestUpdateVMKeepsSpecAndName(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	v := testVM("beef0001", "keep", base)
	insert(t, s, v)
	changed := *v
	changed.Name, changed.Spec, changed.Status = "renamed", []byte(`{}`), StatusRunning
	if err := s.UpdateVM(ctx, &changed); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetVM(ctx, v.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "keep" || string(got.Spec) != string(v.Spec) || got.Status != StatusRunning {
		t.Errorf("after UpdateVM: name %q spec %s status %s; want name and spec unchanged, status running", got.Name, got.Spec, got.Status)
	}
}

func TestUpdateVMUnknown(t *testing.T) {
	s, _ := openTest(t)
	err := s.UpdateVM(context.Background(), testVM("0000dead", "ghost", base))
	if !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("UpdateVM of an unknown ID = %v, want ErrNotFound", err)
	}
}

func TestListVMsOrderAndDelete(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	// Inserted out of order, and with IDs and names that sort differently.
	insert(t, s,
		testVM("cc", "first-made-last", base.Add(3*time.Second)),
		testVM("aa", "zeta", base.Add(1)),
		testVM("bb", "alpha", base.Add(2*time.Second)),
	)
	ids := func() []string {
		t.Helper()
		vms, err := s.ListVMs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, v := range vms {
			out = append(out, v.ID)
		}
		return out
	}
	if got, want := ids(), []string{"aa", "bb", "cc"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("ListVMs IDs = %v, want %v (by created)", got, want)
	}
	if err := s.DeleteVM(ctx, "bb"); err != nil {
		t.Fatal(err)
	}
	if got, want := ids(), []string{"aa", "cc"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("after DeleteVM(bb) IDs = %v, want %v", got, want)
	}
	if _, err := s.GetVM(ctx, "alpha"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("GetVM of a deleted VM = %v, want ErrNotFound", err)
	}
	// The name is free again.
	insert(t, s, testVM("dd", "alpha", base.Add(4*time.Second)))
}

func TestEvents(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	times := []time.Time{base, base.Add(time.Second), base.Add(2 * time.Second), base.Add(3 * time.Second)}
	var added []Event
	for i, tm := range times {
		e, err := s.AddEvent(ctx, Event{Time: tm, VMID: "aa", Name: "web", Action: "a" + string(rune('0'+i)), Attrs: "exitCode=" + string(rune('0'+i))})
		if err != nil {
			t.Fatal(err)
		}
		if i > 0 && e.Seq <= added[i-1].Seq {
			t.Errorf("Seq %d not after %d", e.Seq, added[i-1].Seq)
		}
		added = append(added, e)
	}
	actions := func(evs []Event) []string {
		var out []string
		for _, e := range evs {
			out = append(out, e.Action)
		}
		return out
	}
	tests := []struct {
		name         string
		since, until time.Time
		want         []string
	}{
		{"window", times[1], times[3], []string{"a1", "a2"}},
		{"since is inclusive", times[2], time.Time{}, []string{"a2", "a3"}},
		{"until is exclusive", time.Time{}, times[1], []string{"a0"}},
		{"all", time.Time{}, time.Time{}, []string{"a0", "a1", "a2", "a3"}},
		{"empty window", times[1], times[1], nil},
		{"one nanosecond", times[2], times[2].Add(1), []string{"a2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			evs, err := s.Events(ctx, tt.since, tt.until)
			if err != nil {
				t.Fatal(err)
			}
			if got := actions(evs); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Events(%v, %v) = %v, want %v", tt.since, tt.until, got, tt.want)
			}
		})
	}
	// No time given: AddEvent stamps one.
	e, err := s.AddEvent(ctx, Event{VMID: "aa", Name: "web", Action: "now"})
	if err != nil {
		t.Fatal(err)
	}
	if e.Time.IsZero() {
		t.Error("AddEvent left Time zero")
	}
	if e.Seq <= added[len(added)-1].Seq {
		t.Errorf("Seq %d not after %d", e.Seq, added[len(added)-1].Seq)
	}

	evs, err := s.Events(ctx, times[0], times[1])
	if err != nil || len(evs) != 1 {
		t.Fatalf("Events = %v, %v", evs, err)
	}
	if got := evs[0]; got.Seq != added[0].Seq || !got.Time.Equal(times[0]) || got.VMID != "aa" || got.Name != "web" || got.Attrs != "exitCode=0" {
		t.Errorf("stored event = %+v, want %+v", got, added[0])
	}
}

func TestReopenKeepsData(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	v := testVM("feed0001", "persist", base)
	v.Status, v.PID, v.StartedAt = StatusRunning, 99, base.Add(5)
	insert(t, s, v)
	ev, err := s.AddEvent(ctx, Event{Time: base, VMID: v.ID, Name: v.Name, Action: "created"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(path)
	if err != nil {
		t.Fatalf("reopening: %v", err)
	}
	defer s.Close()
	got, err := s.GetVM(ctx, "persist")
	if err != nil {
		t.Fatalf("GetVM after reopen: %v", err)
	}
	if got.ID != v.ID || got.Status != StatusRunning || got.PID != 99 || !got.StartedAt.Equal(v.StartedAt) || string(got.Spec) != string(v.Spec) {
		t.Errorf("after reopen VM = %+v, want %+v", got, v)
	}
	evs, err := s.Events(ctx, time.Time{}, time.Time{})
	if err != nil || len(evs) != 1 || evs[0].Seq != ev.Seq || evs[0].Action != "created" {
		t.Errorf("after reopen Events = %+v, %v; want the one event", evs, err)
	}
	// Sequence numbers keep growing across a reopen.
	next, err := s.AddEvent(ctx, Event{VMID: v.ID, Name: v.Name, Action: "started"})
	if err != nil {
		t.Fatal(err)
	}
	if next.Seq <= ev.Seq {
		t.Errorf("Seq after reopen = %d, want > %d", next.Seq, ev.Seq)
	}
}

// A name that is also a prefix of another VM's ID is free, as in docker;
// the ID prefix still finds that VM when no VM has the name.
func TestNameInUseIsExact(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	id := "c" + strings.Repeat("0", 63)
	if err := s.InsertVM(ctx, &VM{ID: id, Name: "web", Spec: []byte("{}"), Desired: DesiredStopped, Status: StatusCreated}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		want bool
	}{{"web", true}, {"c", false}, {id, false}, {"we", false}} {
		got, err := s.NameInUse(ctx, c.name)
		if err != nil || got != c.want {
			t.Errorf("NameInUse(%q) = %v, %v; want %v", c.name, got, err, c.want)
		}
	}
	if v, err := s.GetVM(ctx, "c"); err != nil || v.ID != id {
		t.Errorf("GetVM by ID prefix = %v, %v", v, err)
	}
	if err := s.InsertVM(ctx, &VM{ID: "d" + strings.Repeat("0", 63), Name: "c", Spec: []byte("{}"), Desired: DesiredStopped, Status: StatusCreated}); err != nil {
		t.Fatalf("a VM named like another's ID prefix: %v", err)
	}
	if v, err := s.GetVM(ctx, "c"); err != nil || v.Name != "c" {
		t.Errorf("GetVM(\"c\") = %v, %v; want the VM named c before the ID prefix", v, err)
	}
}
