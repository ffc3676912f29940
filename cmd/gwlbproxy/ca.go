package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/gwlbproxy/gwlbproxy/certs"
	"github.com/gwlbproxy/gwlbproxy/internal/appliance"
	"github.com/gwlbproxy/gwlbproxy/internal/cliflag"
)

// caUsage is what `gwlbproxy ca` takes.
const caUsage = "usage: gwlbproxy ca init --out DIR [--cn NAME] [--force] | gwlbproxy ca trust [--state-dir DIR | --ca-cert F --ca-key F | --ca-secret ID] [--trust-host H]"

// runCA implements `gwlbproxy ca init|trust`.
func runCA(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New(caUsage)
	}
	fs := flag.NewFlagSet("gwlbproxy ca "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := appliance.DefaultOptions()
	switch args[0] {
	case "init":
		out := fs.String("out", "", "directory to write ca.pem and ca-key.pem (mode 0600) to")
		cn := fs.String("cn", certs.DefaultCommonName, "the CA's common name")
		force := fs.Bool("force", false, "replace a CA already in --out (every client that trusts it must then trust the new one)")
		if err := parseNoArgs(fs, args[1:]); err != nil {
			return err
		}
		if *out == "" {
			return fmt.Errorf("ca init: --out DIR is required")
		}
		if !*force {
			// Pointed at the appliance's state directory, a new CA would
			// silently replace the one every client already trusts.
			for _, name := range []string{certs.CertFileName, certs.KeyFileName} {
				if _, err := os.Lstat(filepath.Join(*out, name)); err == nil {
					return fmt.Errorf("ca init: %s already exists; pass --force to replace the CA clients trust", filepath.Join(*out, name))
				} else if !errors.Is(err, os.ErrNotExist) {
					return fmt.Errorf("ca init: %w", err)
				}
			}
		}
		ca, err := certs.Generate(*cn)
		if err != nil {
			return err
		}
		if err := ca.WriteFiles(*out); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s/%s and %s/%s\nSHA-256 fingerprint: %s\n", *out, certs.CertFileName, *out, certs.KeyFileName, ca.Fingerprint())
		return nil
	case "trust":
		fs.StringVar(&o.StateDir, "state-dir", o.StateDir, "directory holding the appliance's CA")
		fs.StringVar(&o.CACert, "ca-cert", "", "CA certificate file (PEM)")
		fs.StringVar(&o.CAKey, "ca-key", "", "CA key file (PEM)")
		caSecretFlags(fs, &o)
		fs.StringVar(&o.TrustHost, "trust-host", o.TrustHost, "host name clients fetch the CA from")
		if err := parseNoArgs(fs, args[1:]); err != nil {
			return err
		}
		if err := appliance.CheckCAFlags(&o); err != nil {
			return err
		}
		if err := checkEndpointURL("--ca-secret-endpoint", o.CASecret.Endpoint); err != nil {
			return err
		}
		if err := appliance.CheckTrustHost(o.TrustHost); err != nil {
			return err
		}
		if o.CASecret.ID == "" && o.CACert == "" {
			// Only the appliance makes a CA in its state directory: one
			// made here would not be the CA the appliance uses when it is
			// given another (--ca-secret), and its install commands would
			// hand clients the wrong one.
			o.CACert, o.CAKey = filepath.Join(o.StateDir, certs.CertFileName), filepath.Join(o.StateDir, certs.KeyFileName)
			if _, err := os.Stat(o.CACert); errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("ca trust: no CA in --state-dir %s (the appliance makes one there on its first run; or name the CA with --ca-cert/--ca-key or --ca-secret)", o.StateDir)
			}
		}
		ca, err := appliance.LoadCA(&o)
		if err != nil {
			return err
		}
		return certs.WriteTrustCommands(stdout, ca, o.TrustHost)
	case "-h", "-help", "--help", "help":
		fmt.Fprintln(stderr, caUsage)
		return nil
	}
	return fmt.Errorf("ca: unknown subcommand %q (want init or trust)", args[0])
}

// parseNoArgs parses a subcommand's flags and refuses an argument left
// over: the flag package stops at the first one, so every flag after a
// stray word would be dropped without a word (`ca trust x --ca-cert F`
// printing the commands for another CA than F).
func parseNoArgs(fs *flag.FlagSet, args []string) error {
	if err := cliflag.Parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%s: unexpected argument %q (see --help)", fs.Name(), fs.Arg(0))
	}
	return nil
}

// caSecretFlags adds the --ca-secret flags, shared by the appliance and
// `gwlbproxy ca trust`.
func caSecretFlags(fs *flag.FlagSet, o *appliance.Options) {
	fs.StringVar(&o.CASecret.ID, "ca-secret", o.CASecret.ID, "AWS Secrets Manager secret (name or ARN) holding the CA certificate and key as one PEM string (cat ca.pem ca-key.pem); instead of --ca-cert/--ca-key and the state-dir CA")
	fs.StringVar(&o.CASecret.Region, "ca-secret-region", o.CASecret.Region, "region of --ca-secret (default: the ARN's, else from the environment or instance metadata)")
	fs.StringVar(&o.CASecret.Endpoint, "ca-secret-endpoint", o.CASecret.Endpoint, "Secrets Manager endpoint URL, e.g. a VPC endpoint")
}
