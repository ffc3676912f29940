package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"

	"github.com/gwlbproxy/gwlbproxy/certs"
)

// loadCA returns the interception CA: the secret named by --ca-secret, the
// files named by --ca-cert and --ca-key, or the one kept in --state-dir,
// created on first start.
func loadCA(o *options) (*certs.CA, error) {
	if err := checkCAFlags(o); err != nil {
		return nil, err
	}
	switch {
	case o.CASecret.ID != "":
		// Bounded by the secret's timeout: a start-up that cannot reach
		// Secrets Manager fails, and systemd restarts it, rather than hangs.
		ca, err := certs.LoadSecret(context.Background(), o.CASecret)
		if err != nil {
			return nil, fmt.Errorf("loading the CA: %w", err)
		}
		return ca, nil
	case o.CACert != "" && o.CAKey != "":
		ca, err := certs.Load(o.CACert, o.CAKey)
		if err != nil {
			return nil, fmt.Errorf("loading the CA: %w", err)
		}
		return ca, nil
	}
	ca, created, err := certs.LoadOrCreate(o.StateDir)
	if err != nil {
		return nil, fmt.Errorf("CA in --state-dir %s: %w", o.StateDir, err)
	}
	if created {
		slog.Info("created a new interception CA; hand it to clients (see `gwlbproxy ca trust`)",
			"dir", o.StateDir, "fingerprint", ca.Fingerprint())
	}
	return ca, nil
}

// checkCAFlags rejects combinations of the CA flags that name more than one
// CA, or half of one.
func checkCAFlags(o *options) error {
	switch {
	case o.CASecret.ID != "" && (o.CACert != "" || o.CAKey != ""):
		return fmt.Errorf("--ca-secret and --ca-cert/--ca-key both name a CA: give one or the other")
	case o.CASecret.ID == "" && (o.CASecret.Region != "" || o.CASecret.Endpoint != ""):
		return fmt.Errorf("--ca-secret-region and --ca-secret-endpoint need --ca-secret")
	case (o.CACert != "") != (o.CAKey != ""):
		return fmt.Errorf("--ca-cert and --ca-key go together")
	}
	return nil
}

// runCA implements `gwlbproxy ca init|trust`.
func runCA(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("usage: gwlbproxy ca init --out DIR | gwlbproxy ca trust [--state-dir DIR | --ca-cert F --ca-key F | --ca-secret ID] [--trust-host H]")
	}
	fs := flag.NewFlagSet("gwlbproxy ca "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := defaultOptions()
	switch args[0] {
	case "init":
		out := fs.String("out", "", "directory to write ca.pem and ca-key.pem (mode 0600) to")
		cn := fs.String("cn", certs.DefaultCommonName, "the CA's common name")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if *out == "" {
			return fmt.Errorf("ca init: --out DIR is required")
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
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		ca, err := loadCA(&o)
		if err != nil {
			return err
		}
		return certs.WriteTrustCommands(stdout, ca, o.TrustHost)
	}
	return fmt.Errorf("ca: unknown subcommand %q (want init or trust)", args[0])
}

// caSecretFlags adds the --ca-secret flags, shared by the appliance and
// `gwlbproxy ca trust`.
func caSecretFlags(fs *flag.FlagSet, o *options) {
	fs.StringVar(&o.CASecret.ID, "ca-secret", o.CASecret.ID, "AWS Secrets Manager secret (name or ARN) holding the CA certificate and key as one PEM string (cat ca.pem ca-key.pem); instead of --ca-cert/--ca-key and the state-dir CA")
	fs.StringVar(&o.CASecret.Region, "ca-secret-region", o.CASecret.Region, "region of --ca-secret (default: the ARN's, else from the environment or instance metadata)")
	fs.StringVar(&o.CASecret.Endpoint, "ca-secret-endpoint", o.CASecret.Endpoint, "Secrets Manager endpoint URL, e.g. a VPC endpoint")
}
