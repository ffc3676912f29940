package appliance

import (
	"reflect"
	"slices"
	"strings"
	"testing"
)

// TestMetricsExportEveryCounter: every number /stats shows is on /metrics
// too, as configuration.md says ("the same counters"). Each numeric field
// of a snapshot, the optional parts' included, gets a value of its own,
// and each value must come out as some metric's.
func TestMetricsExportEveryCounter(t *testing.T) {
	var s stats
	fields := map[float64]string{}
	next := 1000.0
	var fill func(v reflect.Value, path string)
	fill = func(v reflect.Value, path string) {
		switch v.Kind() {
		case reflect.Pointer:
			if v.IsNil() {
				v.Set(reflect.New(v.Type().Elem()))
			}
			fill(v.Elem(), path)
		case reflect.Struct:
			for i := range v.NumField() {
				f := v.Type().Field(i)
				name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
				if !f.IsExported() || name == "-" {
					continue
				}
				if name == "" {
					name = f.Name
				}
				fill(v.Field(i), path+"."+name)
			}
		case reflect.Int, reflect.Int32, reflect.Int64, reflect.Uint, reflect.Uint32, reflect.Uint64:
			next++
			if v.CanInt() {
				v.SetInt(int64(next))
			} else {
				v.SetUint(uint64(next))
			}
			fields[next] = path
		case reflect.Float64:
			next++
			v.SetFloat(next)
			fields[next] = path
		}
	}
	fill(reflect.ValueOf(&s).Elem(), "")

	seen := map[float64]bool{}
	for _, mf := range collectMetrics(t, s) {
		for _, m := range mf.GetMetric() {
			seen[m.GetCounter().GetValue()] = true
			seen[m.GetGauge().GetValue()] = true
		}
	}
	var missing []string
	for v, path := range fields {
		// A setting, not a count.
		if path == ".capture.mirror.plaintext_vlan_offset" {
			continue
		}
		if !seen[v] {
			missing = append(missing, path)
		}
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		t.Errorf("%d numbers of /stats are not on /metrics:\n%s", len(missing), strings.Join(missing, "\n"))
	}
}
