package deploy

import (
	"os"
	"os/exec"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/gwlbproxy/gwlbproxy/proxy/policy"
)

// nfpmConfig is the part of nfpm.yaml the tests compare with the files.
type nfpmConfig struct {
	Contents []struct {
		Src  string `yaml:"src"`
		Dst  string `yaml:"dst"`
		Type string `yaml:"type"`
	} `yaml:"contents"`
	Scripts map[string]string `yaml:"scripts"`
}

func loadNfpm(t *testing.T) nfpmConfig {
	t.Helper()
	data, err := os.ReadFile("nfpm.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c nfpmConfig
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatalf("nfpm.yaml: %v", err)
	}
	return c
}

// installed returns the source and type of what the package installs at dst.
func (c nfpmConfig) installed(t *testing.T, dst string) (src, typ string) {
	t.Helper()
	for _, f := range c.Contents {
		if f.Dst == dst {
			return f.Src, f.Type
		}
	}
	t.Fatalf("the package installs nothing at %s (nfpm.yaml)", dst)
	return "", ""
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// TestUnit: the unit runs what the package installs, with the flags file
// and policy it installs, as the user the package creates, with the
// capabilities the appliance needs and no others, and gives the drain
// the time it takes.
func TestUnit(t *testing.T) {
	u := parseUnit(t, "systemd/gwlbproxy.service")
	pkg := loadNfpm(t)
	if src, _ := pkg.installed(t, "/usr/lib/systemd/system/gwlbproxy.service"); src != "deploy/systemd/gwlbproxy.service" {
		t.Errorf("the package installs %s as the unit", src)
	}

	envFile, optional := strings.CutPrefix(u.one(t, "Service", "EnvironmentFile"), "-")
	if src, typ := pkg.installed(t, envFile); src != "deploy/etc/flags" || typ != "config|noreplace" || !optional {
		t.Errorf("EnvironmentFile %s: the package installs %s (%s) there; want deploy/etc/flags, config|noreplace, optional (-)", envFile, src, typ)
	}
	env := parseEnvFile(t, "etc/flags", readFile(t, "etc/flags"))
	if len(env) != 1 || env["GWLBPROXY_FLAGS"] == "" {
		t.Errorf("etc/flags sets %v, want GWLBPROXY_FLAGS only", env)
	}
	execStart := u.one(t, "Service", "ExecStart")
	if !strings.HasSuffix(execStart, " $GWLBPROXY_FLAGS") {
		t.Errorf("ExecStart %q: want $GWLBPROXY_FLAGS last, so that the flags file can override the unit's flags", execStart)
	}
	args := execArgs(t, execStart, env)
	if src, _ := pkg.installed(t, args[0]); src != "${GWLBPROXY_BIN}/gwlbproxy" {
		t.Errorf("ExecStart runs %s, where the package installs %s", args[0], src)
	}
	checkApplianceAccepts(t, args[1:])
	// Without the flags file too.
	checkApplianceAccepts(t, execArgs(t, execStart, nil)[1:])

	config, _ := flagValue(args, "config")
	src, typ := pkg.installed(t, config)
	if src != "deploy/etc/policy.yaml" || typ != "config|noreplace" {
		t.Errorf("--config %s: the package installs %s (%s) there; want deploy/etc/policy.yaml, config|noreplace", config, src, typ)
	}
	p, err := policy.Parse("etc/policy.yaml", []byte(readFile(t, "etc/policy.yaml")))
	if err != nil {
		t.Fatalf("the default policy: %v", err)
	}
	if p.Mode() != policy.Audit {
		t.Errorf("the default policy's mode is %v: want audit (records everything, needs no CA)", p.Mode())
	}
	// Reload checks the file ExecStart reads, with the binary it runs, and
	// only then sends the SIGHUP; the default policy passes the check (it
	// says its default outright).
	wantReload := []string{args[0] + " policy check " + config, "/bin/kill -HUP $MAINPID"}
	if got := u["Service"]["ExecReload"]; !slices.Equal(got, wantReload) {
		t.Errorf("ExecReload=%q, want %q", got, wantReload)
	}
	if _, explicit, _, err := policy.Check("etc/policy.yaml"); err != nil || !explicit {
		t.Errorf("the default policy fails `policy check`: %v, explicit default %v", err, explicit)
	}

	// State and logs live in the directories systemd creates for the user.
	if dir, _ := flagValue(args, "state-dir"); dir != "/var/lib/"+u.one(t, "Service", "StateDirectory") {
		t.Errorf("--state-dir %s, StateDirectory=%s", dir, u.one(t, "Service", "StateDirectory"))
	}
	if log, _ := flagValue(args, "access-log"); path.Dir(log) != "/var/log/"+u.one(t, "Service", "LogsDirectory") {
		t.Errorf("--access-log %s, LogsDirectory=%s", log, u.one(t, "Service", "LogsDirectory"))
	}
	// The appliance rotates it itself: the packaged logrotate must not
	// too, and the operator's stanza (not installed) names the same path.
	if log, _ := flagValue(args, "access-log"); strings.Contains(readFile(t, "etc/logrotate"), log+" {") {
		t.Errorf("etc/logrotate rotates %s, which the appliance rotates itself", log)
	}
	if log, _ := flagValue(args, "access-log"); !strings.Contains(readFile(t, accessExample), log+" {") {
		t.Errorf("%s does not rotate %s", accessExample, log)
	}

	user := u.one(t, "Service", "User")
	if user != "gwlbproxy" || u.one(t, "Service", "Group") != user || len(u["Service"]["DynamicUser"]) != 0 {
		t.Errorf("User=%s Group=%v DynamicUser=%v: want the system user gwlbproxy", user, u["Service"]["Group"], u["Service"]["DynamicUser"])
	}
	if !strings.Contains(readFile(t, "scripts/postinstall.sh"), "useradd --system --gid "+user) {
		t.Errorf("scripts/postinstall.sh does not create the system user %s", user)
	}

	// CAP_NET_RAW for the raw return path, CAP_NET_BIND_SERVICE for port
	// 80; nothing else, and nothing gained later.
	wantCaps := []string{"CAP_NET_BIND_SERVICE", "CAP_NET_RAW"}
	for _, key := range []string{"AmbientCapabilities", "CapabilityBoundingSet"} {
		caps := strings.Fields(u.one(t, "Service", key))
		slices.Sort(caps)
		if !slices.Equal(caps, wantCaps) {
			t.Errorf("%s=%v, want %v", key, caps, wantCaps)
		}
	}
	for key, want := range map[string]string{
		"NoNewPrivileges":       "yes",
		"ProtectSystem":         "strict",
		"ProtectHome":           "yes",
		"PrivateTmp":            "yes",
		"PrivateDevices":        "yes",
		"Type":                  "notify", // READY=1 once listening: a reload during start-up waits
		"Restart":               "on-failure",
		"KillSignal":            "SIGTERM",
		"SystemCallErrorNumber": "EPERM",
	} {
		if got := u.one(t, "Service", key); got != want {
			t.Errorf("%s=%s, want %s", key, got, want)
		}
	}
	// A SIGHUP before the appliance catches it (its first moments after
	// exec) kills it with a status Restart=on-failure counts as clean:
	// the unit restarts it then too. Nothing sends SIGHUP to stop it.
	var force []string
	for _, v := range u["Service"]["RestartForceExitStatus"] {
		force = append(force, strings.Fields(v)...)
	}
	if !slices.Contains(force, "SIGHUP") {
		t.Errorf("RestartForceExitStatus=%v: want SIGHUP, or a SIGHUP in the first moments after exec leaves the appliance down", force)
	}
	if v := u["Service"]["SendSIGHUP"]; len(v) != 0 && v[len(v)-1] != "no" {
		t.Errorf("SendSIGHUP=%v: a stop would send SIGHUP, which RestartForceExitStatus turns into a restart", v)
	}
	families := strings.Fields(u.one(t, "Service", "RestrictAddressFamilies"))
	if !slices.Contains(families, "AF_INET") || !slices.Contains(families, "AF_INET6") || slices.Contains(families, "AF_PACKET") {
		t.Errorf("RestrictAddressFamilies=%v", families)
	}
	// A CA made at first start must not be dated from an unsynchronised
	// clock: after time-sync.target, which is passive, so not wanted.
	var after, wants []string
	for _, v := range u["Unit"]["After"] {
		after = append(after, strings.Fields(v)...)
	}
	for _, v := range u["Unit"]["Wants"] {
		wants = append(wants, strings.Fields(v)...)
	}
	if !slices.Contains(after, "time-sync.target") || slices.Contains(wants, "time-sync.target") {
		t.Errorf("After=%v Wants=%v: want After=time-sync.target (and no Wants: the target is passive)", after, wants)
	}
	if got := u.one(t, "Unit", "StartLimitIntervalSec"); got != "0" {
		t.Errorf("StartLimitIntervalSec=%s, want 0: a failure lasting seconds at boot must not stop the restarts", got)
	}
	if got := u.one(t, "Install", "WantedBy"); got != "multi-user.target" {
		t.Errorf("WantedBy=%s", got)
	}

	// The stop timeout covers the drain (the appliance exits within
	// --drain-timeout plus a second), with a margin.
	drain := 300 * time.Second
	if v, ok := flagValue(args, "drain-timeout"); ok {
		if drain, err = time.ParseDuration(v); err != nil {
			t.Fatal(err)
		}
	}
	if stop := systemdSpan(t, u.one(t, "Service", "TimeoutStopSec")); stop < drain+10*time.Second {
		t.Errorf("TimeoutStopSec %v: want at least --drain-timeout %v plus 10 s", stop, drain)
	}
	// The packaged flags hold the drain until a GWLB health check of the
	// template's settings (2 failures 10 s apart) has seen the 503, with
	// a margin: until then new flows keep coming. The appliance refuses a
	// minimum above --drain-timeout (the flag check above does not get as
	// far as the values).
	v, _ := flagValue(args, "drain-min")
	if drainMin, err := time.ParseDuration(v); err != nil || drainMin < 30*time.Second || drainMin > drain {
		t.Errorf("--drain-min %q in etc/flags: want 30s (2 x 10 s and a margin) to --drain-timeout %v", v, drain)
	}
}

// TestSysctl: the drop-in opens unprivileged ICMP sockets to every group
// (the appliance's echo relay), where the package installs it and the
// postinstall script applies it.
func TestSysctl(t *testing.T) {
	const dst = "/usr/lib/sysctl.d/60-gwlbproxy.conf"
	if src, _ := loadNfpm(t).installed(t, dst); src != "deploy/sysctl/60-gwlbproxy.conf" {
		t.Errorf("the package installs %s at %s", src, dst)
	}
	var settings []string
	for _, line := range strings.Split(readFile(t, "sysctl/60-gwlbproxy.conf"), "\n") {
		if line = strings.TrimSpace(line); line != "" && line[0] != '#' {
			k, v, _ := strings.Cut(line, "=")
			settings = append(settings, strings.TrimSpace(k)+"="+strings.Join(strings.Fields(v), " "))
		}
	}
	want := []string{
		"net.ipv4.ping_group_range=0 2147483647",
		"net.ipv4.ip_local_port_range=1024 65535",
		"net.ipv4.ip_local_reserved_ports=6081",
	}
	if !slices.Equal(settings, want) {
		t.Errorf("sysctl drop-in sets %q, want %q", settings, want)
	}
	if !strings.Contains(readFile(t, "scripts/postinstall.sh"), "sysctl -q -p "+dst) {
		t.Errorf("scripts/postinstall.sh does not apply %s", dst)
	}
}

// TestScripts: the package scripts are POSIX sh (Debian's sh is dash), and
// handle both the deb arguments and the rpm ones.
func TestScripts(t *testing.T) {
	pkg := loadNfpm(t)
	want := map[string][]string{
		"postinstall": {"configure", "1 | 2"},
		"preremove":   {"remove | 0"},
		"postremove":  {"purge"},
	}
	for kind, file := range pkg.Scripts {
		script := readFile(t, strings.TrimPrefix(file, "deploy/"))
		if !strings.HasPrefix(script, "#!/bin/sh\n") {
			t.Errorf("%s: want #!/bin/sh", file)
		}
		if out, err := exec.Command("sh", "-n", "../"+file).CombinedOutput(); err != nil {
			t.Errorf("sh -n %s: %v\n%s", file, err, out)
		}
		for _, w := range want[kind] {
			if !strings.Contains(script, w) {
				t.Errorf("%s (%s) does not handle %q", file, kind, w)
			}
		}
		delete(want, kind)
	}
	for kind := range want {
		t.Errorf("nfpm.yaml has no %s script", kind)
	}
}

// TestLogrotateHourly: the package makes logrotate run hourly, so that the
// TLS key log's size bound holds within the hour, not the day (and the
// operator's access log stanza's, where one names the file). Its comment
// says that a stanza, not a flag, leaves the access log to logrotate, and
// what the disk then holds (review r13s26 F4).
func TestLogrotateHourly(t *testing.T) {
	const dst = "/usr/lib/systemd/system/logrotate.timer.d/50-gwlbproxy.conf"
	if src, _ := loadNfpm(t).installed(t, dst); src != "deploy/systemd/logrotate-hourly.conf" {
		t.Errorf("the package installs %s at %s", src, dst)
	}
	conf := readFile(t, "systemd/logrotate-hourly.conf")
	if !strings.Contains(conf, "[Timer]\nOnCalendar=\nOnCalendar=hourly\n") {
		t.Errorf("the drop-in does not reset OnCalendar to hourly:\n%s", conf)
	}
	if strings.Contains(conf, "turns that off") || !strings.Contains(conf, "unless a logrotate stanza names it") || !strings.Contains(conf, "8 x 2.2 GiB") {
		t.Errorf("the drop-in's comment says a flag turns the appliance's rotation off, or not the disk logrotate's rotation takes:\n%s", conf)
	}
	if !strings.Contains(readFile(t, "etc/logrotate"), "maxsize 256M") || !strings.Contains(readFile(t, accessExample), "maxsize 1G") {
		t.Errorf("etc/logrotate or %s has no size bound", accessExample)
	}
}

// TestMirrorDropIn: the drop-in --mirror-tap needs undoes each part of the
// unit's sandbox that keeps the TAP device out (the private /dev, the device
// allow-list ProtectClock sets, the read-only /proc/sys the disable_ipv6
// sysctl is in, a bounding set without CAP_NET_ADMIN), adds CAP_NET_ADMIN
// and nothing else, is installed where docs/ids.md and the appliance's
// error message say, and systemd reads it with the unit without a
// complaint.
func TestMirrorDropIn(t *testing.T) {
	const dst = "/usr/share/gwlbproxy/mirror-tap.conf"
	if src, typ := loadNfpm(t).installed(t, dst); src != "deploy/systemd/mirror-tap.conf" || typ != "" {
		t.Errorf("the package installs %s (%s) at %s", src, typ, dst)
	}
	base := parseUnit(t, "systemd/gwlbproxy.service")
	d := parseUnit(t, "systemd/mirror-tap.conf")
	if len(d) != 1 || d["Service"] == nil {
		t.Fatalf("the drop-in has sections %v, want [Service] only", d)
	}
	for key, want := range map[string]string{
		"PrivateDevices":        "no",
		"DeviceAllow":           "/dev/net/tun rw",
		"ProtectKernelTunables": "no",
		// Lists add to the unit's: CAP_NET_ADMIN joins the two it has.
		"AmbientCapabilities":   "CAP_NET_ADMIN",
		"CapabilityBoundingSet": "CAP_NET_ADMIN",
	} {
		if got := d.one(t, "Service", key); got != want {
			t.Errorf("drop-in %s=%s, want %s", key, got, want)
		}
	}
	if len(d["Service"]) != 5 {
		t.Errorf("the drop-in sets %v: want the five settings above only", d["Service"])
	}
	// What it undoes is what the unit sets.
	for _, key := range []string{"PrivateDevices", "ProtectKernelTunables", "ProtectClock"} {
		if got := base.one(t, "Service", key); got != "yes" {
			t.Errorf("the unit has %s=%s; the drop-in's comments assume yes", key, got)
		}
	}
	for _, doc := range []string{"../docs/ids.md", "../docs/deploy.md", "../netstack/capture/mirror.go"} {
		if !strings.Contains(readFile(t, doc), "cp "+dst+" /etc/systemd/system/gwlbproxy.service.d/") {
			t.Errorf("%s does not say to copy %s into the unit's drop-in directory", doc, dst)
		}
	}

	analyze := toolPath(t, "systemd-analyze")
	// The unit as systemd reads it with the drop-in, from a directory of the
	// test's own; ExecStart must name an executable, so the unit runs true.
	dir := t.TempDir()
	unitText := strings.ReplaceAll(readFile(t, "systemd/gwlbproxy.service"), "/usr/bin/gwlbproxy", "/bin/true")
	if err := os.WriteFile(dir+"/gwlbproxy.service", []byte(unitText), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir+"/gwlbproxy.service.d", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir+"/gwlbproxy.service.d/mirror-tap.conf", []byte(readFile(t, "systemd/mirror-tap.conf")), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(analyze, "verify", "gwlbproxy.service")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+dir+":")
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) != 0 {
		t.Errorf("systemd-analyze verify with the drop-in: %v\n%s", err, out)
	}
}
