package deploy

// A small CloudFormation evaluator for the tests: goformation reads the
// template (its YAML reader turns the short-form tags into long form) and
// checks every resource against its schema; this file resolves the
// intrinsic functions the way CloudFormation does for one set of parameter
// values, and checks that every reference names something that exists.
//
// goformation's own intrinsic handling is not enough for that: it resolves
// Ref only to parameter defaults, turns a Ref to a resource or a GetAtt
// into nothing, and drops a ${Var} of Fn::Sub it cannot resolve, so a
// misspelt reference would pass silently. Here a Ref to a resource becomes
// "ref:Name", a GetAtt "getatt:Name.Attribute", and anything unresolvable
// is an error.

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/awslabs/goformation/v7/cloudformation"
	"github.com/awslabs/goformation/v7/intrinsics"
)

const templatePath = "cloudformation/gwlbproxy.yaml"

// Pseudo parameters, with the values the tests resolve them to.
var pseudoParams = map[string]any{
	"AWS::AccountId":        "123456789012",
	"AWS::Partition":        "aws",
	"AWS::Region":           "us-east-1",
	"AWS::StackId":          "arn:aws:cloudformation:us-east-1:123456789012:stack/gwlbproxy/0",
	"AWS::StackName":        "gwlbproxy",
	"AWS::URLSuffix":        "amazonaws.com",
	"AWS::NotificationARNs": []any{},
	"AWS::NoValue":          noValue{},
}

var testAZs = []any{"us-east-1a", "us-east-1b", "us-east-1c"}

// noValue is what Ref AWS::NoValue resolves to: the property or list
// element holding it is removed.
type noValue struct{}

// rawTemplate is the template in long form, nothing resolved.
type rawTemplate struct {
	doc        map[string]any
	params     map[string]map[string]any
	resources  map[string]map[string]any
	conditions map[string]any
}

func loadRawTemplate(t *testing.T) *rawTemplate {
	t.Helper()
	data, err := os.ReadFile(templatePath)
	if err != nil {
		t.Fatal(err)
	}
	j, err := intrinsics.ProcessYAML(data, &intrinsics.ProcessorOptions{NoProcess: true})
	if err != nil {
		t.Fatalf("%s: %v", templatePath, err)
	}
	rt := &rawTemplate{params: map[string]map[string]any{}, resources: map[string]map[string]any{}}
	if err := json.Unmarshal(j, &rt.doc); err != nil {
		t.Fatal(err)
	}
	for name, p := range asMap(rt.doc["Parameters"]) {
		rt.params[name] = asMap(p)
	}
	for name, r := range asMap(rt.doc["Resources"]) {
		rt.resources[name] = asMap(r)
	}
	rt.conditions = asMap(rt.doc["Conditions"])
	return rt
}

func asMap(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

// intrinsic reports whether m is one intrinsic function call (a map with
// the function as its only key) and returns its name and argument.
func intrinsic(v any) (fn string, arg any, ok bool) {
	m, isMap := v.(map[string]any)
	if !isMap || len(m) != 1 {
		return "", nil, false
	}
	for k, a := range m {
		if k == "Ref" || k == "Condition" || strings.HasPrefix(k, "Fn::") {
			return k, a, true
		}
	}
	return "", nil, false
}

var subVar = regexp.MustCompile(`\$\{([^}]*)\}`)

// subVars lists the variables of an Fn::Sub string, leaving out the
// ${!Literal} escapes.
func subVars(s string) []string {
	var vars []string
	for _, m := range subVar.FindAllStringSubmatch(s, -1) {
		if !strings.HasPrefix(m[1], "!") {
			vars = append(vars, m[1])
		}
	}
	return vars
}

// checkReferences reports every reference in the template that names
// nothing: Ref, GetAtt, Fn::Sub variables, conditions (in Fn::If, in
// Condition, on resources and outputs), DependsOn; every intrinsic function
// the evaluator does not know; and every parameter or condition nothing
// uses.
func (rt *rawTemplate) checkReferences() []string {
	var errs []string
	used := map[string]bool{}
	known := []string{"Ref", "Condition", "Fn::GetAtt", "Fn::Sub", "Fn::If", "Fn::Equals", "Fn::Not", "Fn::And",
		"Fn::Or", "Fn::Select", "Fn::Split", "Fn::Join", "Fn::GetAZs", "Fn::Base64"}
	refName := func(where, name string, resourcesAllowed bool) {
		used[name] = true
		_, isParam := rt.params[name]
		_, isPseudo := pseudoParams[name]
		_, isResource := rt.resources[name]
		if !isParam && !isPseudo && !(resourcesAllowed && isResource) {
			errs = append(errs, fmt.Sprintf("%s: Ref %q names no parameter%s", where, name,
				map[bool]string{true: " or resource", false: " (only parameters in conditions)"}[resourcesAllowed]))
		}
	}
	condName := func(where string, v any) {
		name, ok := v.(string)
		if _, exists := rt.conditions[name]; !ok || !exists {
			errs = append(errs, fmt.Sprintf("%s: condition %v does not exist", where, v))
		}
		used["condition:"+name] = true
	}
	getAtt := func(where, res string) {
		if _, ok := rt.resources[res]; !ok {
			errs = append(errs, fmt.Sprintf("%s: GetAtt of %q, which is no resource", where, res))
		}
	}
	dependsOn := func(where string, v any) {
		res, _ := v.(string)
		if _, ok := rt.resources[res]; !ok {
			errs = append(errs, fmt.Sprintf("%s: DependsOn %v, which is no resource", where, v))
		}
	}
	var walk func(where string, v any, inCondition bool)
	walk = func(where string, v any, inCondition bool) {
		if fn, arg, ok := intrinsic(v); ok {
			if !slices.Contains(known, fn) {
				errs = append(errs, fmt.Sprintf("%s: intrinsic function %s is not understood by this test", where, fn))
				return
			}
			switch fn {
			case "Ref":
				name, _ := arg.(string)
				refName(where, name, !inCondition)
				return
			case "Condition":
				condName(where, arg)
				return
			case "Fn::GetAtt":
				switch a := arg.(type) {
				case []any:
					if len(a) != 2 {
						errs = append(errs, fmt.Sprintf("%s: GetAtt %v: want [resource, attribute]", where, a))
						return
					}
					res, _ := a[0].(string)
					getAtt(where, res)
				case string:
					getAtt(where, strings.SplitN(a, ".", 2)[0])
				default:
					errs = append(errs, fmt.Sprintf("%s: GetAtt %v", where, arg))
				}
				return
			case "Fn::Sub":
				var s string
				var vars map[string]any
				switch a := arg.(type) {
				case string:
					s = a
				case []any:
					if len(a) != 2 {
						errs = append(errs, fmt.Sprintf("%s: Fn::Sub %v: want [string, map]", where, a))
						return
					}
					s, _ = a[0].(string)
					vars = asMap(a[1])
					for k, vv := range vars {
						walk(where+".Fn::Sub."+k, vv, inCondition)
					}
				}
				for _, name := range subVars(s) {
					if _, ok := vars[name]; ok {
						used["subvar:"+where+"."+name] = true
						continue
					}
					if res, _, isAtt := strings.Cut(name, "."); isAtt {
						getAtt(where, res)
						continue
					}
					refName(where, name, !inCondition)
				}
				for k := range vars {
					if !slices.Contains(subVars(s), k) {
						errs = append(errs, fmt.Sprintf("%s: Fn::Sub variable %s is never used", where, k))
					}
				}
				return
			case "Fn::If":
				a, _ := arg.([]any)
				if len(a) != 3 {
					errs = append(errs, fmt.Sprintf("%s: Fn::If %v: want [condition, then, else]", where, arg))
					return
				}
				condName(where, a[0])
				walk(where+"(then)", a[1], inCondition)
				walk(where+"(else)", a[2], inCondition)
				return
			}
			walk(where+"."+fn, arg, inCondition)
			return
		}
		switch x := v.(type) {
		case map[string]any:
			for _, k := range slices.Sorted(maps.Keys(x)) {
				walk(where+"."+k, x[k], inCondition)
			}
		case []any:
			for i, e := range x {
				walk(fmt.Sprintf("%s[%d]", where, i), e, inCondition)
			}
		}
	}
	for name, c := range rt.conditions {
		walk("Conditions."+name, c, true)
	}
	for name, r := range rt.resources {
		where := "Resources." + name
		if c, ok := r["Condition"]; ok {
			condName(where, c)
		}
		switch d := r["DependsOn"].(type) {
		case []any:
			for _, e := range d {
				dependsOn(where, e)
			}
		case nil:
		default:
			dependsOn(where, d)
		}
		for _, k := range []string{"Properties", "CreationPolicy", "UpdatePolicy", "Metadata"} {
			walk(where+"."+k, r[k], false)
		}
	}
	for name, o := range asMap(rt.doc["Outputs"]) {
		om := asMap(o)
		if c, ok := om["Condition"]; ok {
			condName("Outputs."+name, c)
		}
		walk("Outputs."+name, om["Value"], false)
	}
	for _, name := range slices.Sorted(maps.Keys(rt.params)) {
		if !used[name] {
			errs = append(errs, fmt.Sprintf("parameter %s is never used", name))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(rt.conditions)) {
		if !used["condition:"+name] {
			errs = append(errs, fmt.Sprintf("condition %s is never used", name))
		}
	}
	slices.Sort(errs)
	return errs
}

// paramValues is the value of every parameter: the overrides, else the
// defaults, as strings (as CloudFormation passes them).
func (rt *rawTemplate) paramValues(overrides map[string]string) (map[string]string, error) {
	vals := map[string]string{}
	for name, p := range rt.params {
		if v, ok := overrides[name]; ok {
			vals[name] = v
			continue
		}
		d, ok := p["Default"]
		if !ok {
			return nil, fmt.Errorf("parameter %s has no default and no value", name)
		}
		vals[name] = scalarString(d)
	}
	for name := range overrides {
		if _, ok := rt.params[name]; !ok {
			return nil, fmt.Errorf("override of %s, which is no parameter", name)
		}
	}
	return vals, nil
}

func scalarString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(x)
	}
	return fmt.Sprint(v)
}

// checkConstraints reports parameter values that break their parameter's
// AllowedValues, AllowedPattern, MinValue or MaxValue (the patterns here
// are RE2-compatible, so Go's regexp stands in for CloudFormation's).
func (rt *rawTemplate) checkConstraints(vals map[string]string) []string {
	var errs []string
	for _, name := range slices.Sorted(maps.Keys(rt.params)) {
		p, v := rt.params[name], vals[name]
		if av, ok := p["AllowedValues"].([]any); ok {
			allowed := false
			for _, a := range av {
				allowed = allowed || scalarString(a) == v
			}
			if !allowed {
				errs = append(errs, fmt.Sprintf("%s=%q is not among its AllowedValues %v", name, v, av))
			}
		}
		if pat, ok := p["AllowedPattern"].(string); ok {
			re, err := regexp.Compile(pat)
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s: AllowedPattern %q: %v", name, pat, err))
			} else if loc := re.FindStringIndex(v); loc == nil || loc[0] != 0 || loc[1] != len(v) {
				errs = append(errs, fmt.Sprintf("%s=%q does not match its AllowedPattern %q", name, v, pat))
			}
		}
		if p["Type"] == "Number" {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s=%q is not a number", name, v))
				continue
			}
			if mn, ok := p["MinValue"].(float64); ok && n < mn {
				errs = append(errs, fmt.Sprintf("%s=%v is below its MinValue %v", name, n, mn))
			}
			if mx, ok := p["MaxValue"].(float64); ok && n > mx {
				errs = append(errs, fmt.Sprintf("%s=%v is above its MaxValue %v", name, n, mx))
			}
		}
	}
	return errs
}

// resolver evaluates the template for one set of parameter values.
type resolver struct {
	rt    *rawTemplate
	vals  map[string]string
	conds map[string]bool
}

func (r *resolver) condition(name string) (bool, error) {
	if v, ok := r.conds[name]; ok {
		return v, nil
	}
	expr, ok := r.rt.conditions[name]
	if !ok {
		return false, fmt.Errorf("no condition %q", name)
	}
	v, err := r.evalCondition(expr)
	if err != nil {
		return false, fmt.Errorf("condition %s: %w", name, err)
	}
	r.conds[name] = v
	return v, nil
}

func (r *resolver) evalCondition(expr any) (bool, error) {
	fn, arg, ok := intrinsic(expr)
	if !ok {
		return false, fmt.Errorf("%v is not a condition function", expr)
	}
	args, _ := arg.([]any)
	switch fn {
	case "Condition":
		name, _ := arg.(string)
		return r.condition(name)
	case "Fn::Equals":
		if len(args) != 2 {
			return false, fmt.Errorf("Fn::Equals %v: want two values", arg)
		}
		a, err := r.resolve(args[0])
		if err != nil {
			return false, err
		}
		b, err := r.resolve(args[1])
		if err != nil {
			return false, err
		}
		return scalarString(a) == scalarString(b), nil
	case "Fn::Not":
		if len(args) != 1 {
			return false, fmt.Errorf("Fn::Not %v: want one condition", arg)
		}
		v, err := r.evalCondition(args[0])
		return !v, err
	case "Fn::And", "Fn::Or":
		if len(args) < 2 {
			return false, fmt.Errorf("%s %v: want at least two conditions", fn, arg)
		}
		all, anyTrue := true, false
		for _, a := range args {
			v, err := r.evalCondition(a)
			if err != nil {
				return false, err
			}
			all, anyTrue = all && v, anyTrue || v
		}
		if fn == "Fn::And" {
			return all, nil
		}
		return anyTrue, nil
	}
	return false, fmt.Errorf("%s is not a condition function", fn)
}

func (r *resolver) ref(name string) (any, error) {
	if v, ok := r.vals[name]; ok {
		return v, nil
	}
	if v, ok := pseudoParams[name]; ok {
		return v, nil
	}
	if res, ok := r.rt.resources[name]; ok {
		if err := r.resourceExists(name, res); err != nil {
			return nil, err
		}
		return "ref:" + name, nil
	}
	return nil, fmt.Errorf("Ref %q names nothing", name)
}

func (r *resolver) getAtt(res, attr string) (any, error) {
	rr, ok := r.rt.resources[res]
	if !ok {
		return nil, fmt.Errorf("GetAtt %s.%s: no resource %s", res, attr, res)
	}
	if err := r.resourceExists(res, rr); err != nil {
		return nil, err
	}
	return "getatt:" + res + "." + attr, nil
}

func (r *resolver) resourceExists(name string, res map[string]any) error {
	c, ok := res["Condition"].(string)
	if !ok {
		return nil
	}
	v, err := r.condition(c)
	if err != nil {
		return err
	}
	if !v {
		return fmt.Errorf("reference to %s, which condition %s leaves out", name, c)
	}
	return nil
}

// resolve evaluates every intrinsic function in v. Fn::If evaluates only
// the branch its condition picks, as CloudFormation does.
func (r *resolver) resolve(v any) (any, error) {
	fn, arg, ok := intrinsic(v)
	if !ok {
		switch x := v.(type) {
		case map[string]any:
			out := map[string]any{}
			for k, e := range x {
				rv, err := r.resolve(e)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", k, err)
				}
				if _, drop := rv.(noValue); !drop {
					out[k] = rv
				}
			}
			return out, nil
		case []any:
			out := []any{}
			for i, e := range x {
				rv, err := r.resolve(e)
				if err != nil {
					return nil, fmt.Errorf("[%d]: %w", i, err)
				}
				if _, drop := rv.(noValue); !drop {
					out = append(out, rv)
				}
			}
			return out, nil
		}
		return v, nil
	}
	switch fn {
	case "Ref":
		name, _ := arg.(string)
		return r.ref(name)
	case "Fn::GetAtt":
		switch a := arg.(type) {
		case []any:
			if len(a) == 2 {
				return r.getAtt(scalarString(a[0]), scalarString(a[1]))
			}
		case string:
			if res, attr, ok := strings.Cut(a, "."); ok {
				return r.getAtt(res, attr)
			}
		}
		return nil, fmt.Errorf("Fn::GetAtt %v", arg)
	case "Fn::If":
		a, _ := arg.([]any)
		if len(a) != 3 {
			return nil, fmt.Errorf("Fn::If %v", arg)
		}
		c, err := r.condition(scalarString(a[0]))
		if err != nil {
			return nil, err
		}
		if c {
			return r.resolve(a[1])
		}
		return r.resolve(a[2])
	case "Fn::Sub":
		var s string
		vars := map[string]any{}
		switch a := arg.(type) {
		case string:
			s = a
		case []any:
			if len(a) != 2 {
				return nil, fmt.Errorf("Fn::Sub %v", arg)
			}
			s, _ = a[0].(string)
			for k, e := range asMap(a[1]) {
				rv, err := r.resolve(e)
				if err != nil {
					return nil, fmt.Errorf("Fn::Sub variable %s: %w", k, err)
				}
				vars[k] = rv
			}
		default:
			return nil, fmt.Errorf("Fn::Sub %v", arg)
		}
		var subErr error
		out := subVar.ReplaceAllStringFunc(s, func(m string) string {
			name := m[2 : len(m)-1]
			if strings.HasPrefix(name, "!") {
				return "${" + name[1:] + "}"
			}
			var val any
			var err error
			if v, ok := vars[name]; ok {
				val = v
			} else if res, attr, isAtt := strings.Cut(name, "."); isAtt {
				val, err = r.getAtt(res, attr)
			} else {
				val, err = r.ref(name)
			}
			if err == nil {
				if _, isString := val.(string); !isString {
					err = fmt.Errorf("Fn::Sub ${%s} is %v, not a string", name, val)
				}
			}
			if err != nil {
				subErr = errors.Join(subErr, err)
				return m
			}
			return val.(string)
		})
		return out, subErr
	case "Fn::Select":
		a, _ := arg.([]any)
		if len(a) != 2 {
			return nil, fmt.Errorf("Fn::Select %v", arg)
		}
		idx, err := r.resolve(a[0])
		if err != nil {
			return nil, err
		}
		list, err := r.resolve(a[1])
		if err != nil {
			return nil, err
		}
		i, err := strconv.Atoi(scalarString(idx))
		l, isList := list.([]any)
		if err != nil || !isList || i < 0 || i >= len(l) {
			return nil, fmt.Errorf("Fn::Select %v from %v: out of range", idx, list)
		}
		return l[i], nil
	case "Fn::Split":
		a, _ := arg.([]any)
		if len(a) != 2 {
			return nil, fmt.Errorf("Fn::Split %v", arg)
		}
		s, err := r.resolve(a[1])
		if err != nil {
			return nil, err
		}
		str, isString := s.(string)
		if !isString {
			return nil, fmt.Errorf("Fn::Split of %v, not a string", s)
		}
		var out []any
		for _, p := range strings.Split(str, scalarString(a[0])) {
			out = append(out, p)
		}
		return out, nil
	case "Fn::Join":
		a, _ := arg.([]any)
		if len(a) != 2 {
			return nil, fmt.Errorf("Fn::Join %v", arg)
		}
		list, err := r.resolve(a[1])
		if err != nil {
			return nil, err
		}
		l, isList := list.([]any)
		if !isList {
			return nil, fmt.Errorf("Fn::Join of %v, not a list", list)
		}
		parts := make([]string, len(l))
		for i, e := range l {
			s, isString := e.(string)
			if !isString {
				return nil, fmt.Errorf("Fn::Join element %v is not a string", e)
			}
			parts[i] = s
		}
		return strings.Join(parts, scalarString(a[0])), nil
	case "Fn::GetAZs":
		return slices.Clone(testAZs), nil
	case "Fn::Base64":
		s, err := r.resolve(arg)
		if err != nil {
			return nil, err
		}
		str, isString := s.(string)
		if !isString {
			return nil, fmt.Errorf("Fn::Base64 of %v, not a string", s)
		}
		return base64.StdEncoding.EncodeToString([]byte(str)), nil
	}
	return nil, fmt.Errorf("intrinsic function %s is not understood by this test", fn)
}

// resolved is the template evaluated for one set of parameter values.
type resolved struct {
	vals       map[string]string
	conds      map[string]bool
	resources  map[string]map[string]any // resolved, those conditions leave out removed
	outputs    map[string]any
	goformatio *cloudformation.Template
}

// Properties goformation v7.14.9 does not know yet (it predates them); the
// tests read them from the resolved map instead.
var newerThanGoformation = map[string][]string{
	"AWS::ElasticLoadBalancingV2::Listener": {"ListenerAttributes"},
}

func (rt *rawTemplate) resolve(t *testing.T, overrides map[string]string) *resolved {
	t.Helper()
	vals, err := rt.paramValues(overrides)
	if err != nil {
		t.Fatal(err)
	}
	if errs := rt.checkConstraints(vals); len(errs) > 0 {
		t.Fatalf("parameter values break their constraints:\n%s", strings.Join(errs, "\n"))
	}
	r := &resolver{rt: rt, vals: vals, conds: map[string]bool{}}
	for name := range rt.conditions {
		if _, err := r.condition(name); err != nil {
			t.Fatal(err)
		}
	}
	out := &resolved{vals: vals, conds: r.conds, resources: map[string]map[string]any{}, outputs: map[string]any{}}
	for name, res := range rt.resources {
		if c, ok := res["Condition"].(string); ok && !r.conds[c] {
			continue
		}
		v, err := r.resolve(res)
		if err != nil {
			t.Fatalf("resource %s: %v", name, err)
		}
		out.resources[name] = v.(map[string]any)
	}
	for name, o := range asMap(rt.doc["Outputs"]) {
		om := asMap(o)
		if c, ok := om["Condition"].(string); ok && !r.conds[c] {
			continue
		}
		v, err := r.resolve(om["Value"])
		if err != nil {
			t.Fatalf("output %s: %v", name, err)
		}
		out.outputs[name] = v
	}
	out.goformatio = out.typed(t)
	return out
}

// typed decodes the resolved resources with goformation, which rejects any
// property its schema does not know and any value of the wrong type. As
// CloudFormation does, a Ref to a Number parameter (a string) is converted
// where the property takes a number.
func (res *resolved) typed(t *testing.T) *cloudformation.Template {
	t.Helper()
	tmpl := &cloudformation.Template{Resources: cloudformation.Resources{}}
	for _, name := range slices.Sorted(maps.Keys(res.resources)) {
		var r map[string]any
		b, _ := json.Marshal(res.resources[name])
		_ = json.Unmarshal(b, &r)
		typ, _ := r["Type"].(string)
		for _, p := range newerThanGoformation[typ] {
			delete(asMap(r["Properties"]), p)
		}
		proto, ok := cloudformation.AllResources()[typ]
		if !ok {
			t.Fatalf("resource %s: goformation knows no type %q", name, typ)
		}
		for attempt := 0; ; attempt++ {
			b, _ := json.Marshal(r)
			err := json.Unmarshal(b, proto)
			if err == nil {
				break
			}
			var te *json.UnmarshalTypeError
			if !errors.As(err, &te) || attempt > 50 || !coerce(r, strings.Split(te.Field, ".")) {
				t.Fatalf("resource %s (%s): %v", name, typ, err)
			}
		}
		tmpl.Resources[name] = proto
	}
	return tmpl
}

// coerce converts the strings at path (a JSON field path; lists are
// entered element by element) to numbers, where they are numbers.
func coerce(v any, path []string) bool {
	switch x := v.(type) {
	case []any:
		changed := false
		for i := range x {
			if len(path) == 0 {
				if n, ok := number(x[i]); ok {
					x[i], changed = n, true
				}
				continue
			}
			changed = coerce(x[i], path) || changed
		}
		return changed
	case map[string]any:
		if len(path) == 0 {
			return false
		}
		e, ok := x[path[0]]
		if !ok {
			return false
		}
		if len(path) == 1 {
			if _, isList := e.([]any); isList {
				return coerce(e, nil)
			}
			if n, ok := number(e); ok {
				x[path[0]] = n
				return true
			}
			return false
		}
		return coerce(e, path[1:])
	}
	return false
}

func number(v any) (float64, bool) {
	s, ok := v.(string)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseFloat(s, 64)
	return n, err == nil
}

// props returns a resolved resource's properties, failing the test when
// the resource is missing or of another type.
func (res *resolved) props(t *testing.T, name, typ string) map[string]any {
	t.Helper()
	r, ok := res.resources[name]
	if !ok {
		t.Fatalf("no resource %s", name)
	}
	if r["Type"] != typ {
		t.Fatalf("resource %s is a %v, want %s", name, r["Type"], typ)
	}
	return asMap(r["Properties"])
}

// ofType lists the names of the resolved resources of one type.
func (res *resolved) ofType(typ string) []string {
	var names []string
	for name, r := range res.resources {
		if r["Type"] == typ {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}
