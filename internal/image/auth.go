package image

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"golang.org/x/sys/unix"

	"kiln.dev/kiln/internal/atomicfile"
)

// authFile is the subset of docker's config.json that holds credentials,
// so the file can be read by docker tooling and vice versa.
type authFile struct {
	Auths map[string]authEntry `json:"auths"`
}

type authEntry struct {
	Auth     string `json:"auth,omitempty"` // base64("user:password")
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
}

// registryKey normalises what a user types after "login" ("host:port",
// "https://host/", "host/v2/") to the registry name go-containerregistry
// resolves credentials for.
func registryKey(registry string) (string, error) {
	r := strings.TrimPrefix(strings.TrimPrefix(registry, "https://"), "http://")
	r, _, _ = strings.Cut(r, "/")
	reg, err := name.NewRegistry(r)
	if err != nil || r == "" {
		return "", fmt.Errorf("parsing registry %q: %w", registry, ErrInvalidArgument)
	}
	return reg.RegistryStr(), nil
}

// Login stores credentials for registry in <root>/auth.json (mode 0600,
// docker config.json format). It does not contact the registry: a wrong
// password shows up as ErrUnauthorized on the next Pull or Push.
func (s *Store) Login(registry, user, password string) error {
	key, err := registryKey(registry)
	if err != nil {
		return fmt.Errorf("logging in: %w", err)
	}
	if user == "" {
		return fmt.Errorf("logging in to %s: empty user name: %w", key, ErrInvalidArgument)
	}
	err = s.updateAuth(func(f *authFile) {
		f.Auths[key] = authEntry{Auth: base64.StdEncoding.EncodeToString([]byte(user + ":" + password))}
	})
	if err != nil {
		return fmt.Errorf("logging in to %s: %w", key, err)
	}
	return nil
}

// Logout forgets the stored credentials for registry. It is not an error
// if there were none.
func (s *Store) Logout(registry string) error {
	key, err := registryKey(registry)
	if err != nil {
		return fmt.Errorf("logging out: %w", err)
	}
	if err := s.updateAuth(func(f *authFile) { delete(f.Auths, key) }); err != nil {
		return fmt.Errorf("logging out of %s: %w", key, err)
	}
	return nil
}

func (s *Store) updateAuth(fn func(*authFile)) error {
	unlock, err := lockFile(filepath.Join(s.dir, "auth.lock"), unix.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()
	f, err := readAuthFile(s.authPath())
	if err != nil {
		return err
	}
	fn(f)
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding credentials: %w", err)
	}
	return atomicfile.WriteFile(s.authPath(), b, 0o600)
}

func readAuthFile(path string) (*authFile, error) {
	f := &authFile{Auths: map[string]authEntry{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading credentials: %w", err)
	}
	if err := json.Unmarshal(b, f); err != nil {
		return nil, fmt.Errorf("parsing credentials %s: %w: %w", path, ErrCorrupt, err)
	}
	if f.Auths == nil {
		f.Auths = map[string]authEntry{}
	}
	return f, nil
}

// keychain resolves credentials from the store's auth.json first, then
// from the user's docker (or podman) config as docker itself would.
func (s *Store) keychain() authn.Keychain {
	return authn.NewMultiKeychain(fileKeychain{path: s.authPath()}, authn.DefaultKeychain)
}

// fileKeychain reads credentials written by Login.
type fileKeychain struct {
	path string
}

// Resolve implements authn.Keychain. It re-reads the file every time so a
// Login in another process takes effect without a restart.
func (k fileKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	f, err := readAuthFile(k.path)
	if err != nil {
		return nil, err
	}
	e, ok := f.Auths[r.RegistryStr()]
	if !ok {
		return authn.Anonymous, nil
	}
	return authn.FromConfig(authn.AuthConfig{Username: e.Username, Password: e.Password, Auth: e.Auth}), nil
}
