package awsconf

import (
	"strings"
	"testing"
)

// isolate leaves the default chain only what the test sets: no shared
// files, no metadata service.
func isolate(t *testing.T, region string) {
	dir := t.TempDir()
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID": "AKIDAWSCONFTEST", "AWS_SECRET_ACCESS_KEY": "not-a-secret",
		"AWS_PROFILE": "", "AWS_REGION": region, "AWS_DEFAULT_REGION": "",
		"AWS_CONFIG_FILE": dir + "/config", "AWS_SHARED_CREDENTIALS_FILE": dir + "/credentials",
		"AWS_EC2_METADATA_DISABLED": "true",
	} {
		t.Setenv(k, v)
	}
}

func TestLoadRegion(t *testing.T) {
	isolate(t, "eu-central-1")
	cfg, err := Load(t.Context(), "")
	if err != nil || cfg.Region != "eu-central-1" {
		t.Fatalf("Load with AWS_REGION: region %q, %v", cfg.Region, err)
	}
	cfg, err = Load(t.Context(), "ap-northeast-1")
	if err != nil || cfg.Region != "ap-northeast-1" {
		t.Fatalf("Load with a region given: region %q, %v", cfg.Region, err)
	}
	creds, err := cfg.Credentials.Retrieve(t.Context())
	if err != nil || creds.AccessKeyID != "AKIDAWSCONFTEST" {
		t.Fatalf("credentials %q, %v: want the environment's", creds.AccessKeyID, err)
	}
}

func TestLoadWithoutRegion(t *testing.T) {
	isolate(t, "")
	_, err := Load(t.Context(), "")
	if err == nil || !strings.Contains(err.Error(), "region") {
		t.Fatalf("Load with no region anywhere: %v", err)
	}
}
