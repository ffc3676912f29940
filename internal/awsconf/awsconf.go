// Package awsconf loads the AWS configuration that gwlbproxy's AWS clients
// (CloudWatch Logs in cwlogs, Secrets Manager in certs) share: the default
// chain (environment, shared configuration, the instance role through
// IMDSv2 on EC2), with the instance's region from instance metadata as the
// last resort.
package awsconf

import (
	"context"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
)

// ErrNoRegion is returned by Load when no region is set anywhere and
// instance metadata cannot tell it.
var ErrNoRegion = errors.New("no AWS region configured (set one, or run on EC2 with instance metadata reachable)")

// Load returns the configuration of the default chain. A non-empty region
// overrides the chain's; without one, the environment or shared
// configuration names it, or else (on EC2) instance metadata does. Errors
// are ErrNoRegion or start "loading AWS configuration"; callers prefix what
// the configuration was for.
func Load(ctx context.Context, region string) (aws.Config, error) {
	var opts []func(*config.LoadOptions) error
	if region != "" {
		opts = append(opts, config.WithRegion(region))
	} else {
		// Consulted only when neither the environment nor the shared
		// configuration names a region: on EC2, the instance's region.
		opts = append(opts, config.WithEC2IMDSRegion(func(o *config.UseEC2IMDSRegion) {
			o.Client = imds.New(imds.Options{Retryer: retry.AddWithMaxAttempts(retry.NewStandard(), 2)})
		}))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return aws.Config{}, fmt.Errorf("loading AWS configuration (without a region set, it comes from instance metadata): %w", err)
	}
	if cfg.Region == "" {
		return aws.Config{}, ErrNoRegion
	}
	return cfg, nil
}
