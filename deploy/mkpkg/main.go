// Command mkpkg builds the gwlbproxy .deb or .rpm from an nfpm
// configuration (deploy/nfpm.yaml): `make deb` and `make rpm` run it. nfpm
// is used as a library rather than as a `go tool`, which keeps go.mod to
// the packagers' dependencies instead of those of nfpm's whole command line.
//
// Usage: mkpkg -config deploy/nfpm.yaml -packager deb|rpm -target DIR
//
// ${VAR} in the configuration is taken from the environment; a variable
// that is unset is an error, not an empty string (except nfpm's own
// NFPM_*PASSPHRASE, for signing, which this configuration does not use).
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
	_ "github.com/goreleaser/nfpm/v2/rpm" // registers the rpm packager
)

func main() {
	config := flag.String("config", "deploy/nfpm.yaml", "nfpm configuration file")
	packager := flag.String("packager", "", "deb or rpm")
	target := flag.String("target", ".", "directory the package is written to")
	flag.Parse()
	if flag.NArg() > 0 || *packager == "" {
		fmt.Fprintln(os.Stderr, "usage: mkpkg -config FILE -packager deb|rpm -target DIR")
		os.Exit(2)
	}
	path, err := build(*config, *packager, *target)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkpkg:", err)
		os.Exit(1)
	}
	fmt.Println(path)
}

// build writes the package to dir under its conventional file name and
// returns its path.
func build(configPath, format, dir string) (string, error) {
	var unset []string
	cfg, err := nfpm.ParseFileWithEnvMapping(configPath, func(name string) string {
		v, ok := os.LookupEnv(name)
		// nfpm itself asks for NFPM_*PASSPHRASE, for signing.
		if !ok && !strings.HasPrefix(name, "NFPM_") && !slices.Contains(unset, name) {
			unset = append(unset, name)
		}
		return v
	})
	if err != nil {
		return "", fmt.Errorf("%s: %w", configPath, err)
	}
	if len(unset) > 0 {
		return "", fmt.Errorf("%s uses unset environment variables %s", configPath, strings.Join(unset, ", "))
	}
	info, err := cfg.Get(format)
	if err != nil {
		return "", err
	}
	info = nfpm.WithDefaults(info)
	pkg, err := nfpm.Get(format)
	if err != nil {
		return "", err
	}
	target := filepath.Join(dir, pkg.ConventionalFileName(info))
	f, err := os.Create(target)
	if err != nil {
		return "", err
	}
	info.Target = target
	if err := pkg.Package(info, f); err != nil {
		f.Close()
		os.Remove(target)
		return "", fmt.Errorf("%s package: %w", format, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(target)
		return "", err
	}
	return target, nil
}
