// Package deploy holds what runs gwlbproxy on EC2 rather than Go code: the
// CloudFormation template (cloudformation/gwlbproxy.yaml), the systemd unit
// (systemd/), the files the packages install (etc/, sysctl/, scripts/), the
// nfpm configuration of `make deb` and `make rpm` (nfpm.yaml, built by
// mkpkg/). Its tests check that these agree with each other, with the
// appliance's flags and with the Logs Insights catalog. docs/deploy.md
// walks through them.
package deploy
