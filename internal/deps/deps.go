//go:build tools

// Package deps pins modules that packages under construction will import;
// it is removed once real imports hold them in go.mod.
package deps

import (
	_ "github.com/aws/aws-sdk-go-v2/aws"
	_ "github.com/aws/aws-sdk-go-v2/config"
	_ "github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	_ "github.com/aws/aws-sdk-go-v2/service/cloudwatchlogs"
	_ "github.com/elazarl/goproxy"
	_ "github.com/google/gopacket/layers"
	_ "golang.org/x/net/icmp"
	_ "golang.org/x/sync/singleflight"
	_ "golang.org/x/sys/unix"
	_ "gopkg.in/yaml.v3"
	_ "gvisor.dev/gvisor/pkg/tcpip/stack"
	_ "gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	_ "gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	_ "gvisor.dev/gvisor/pkg/tcpip/link/tun"
)
