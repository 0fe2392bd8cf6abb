package cmdline

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// maxConfigFile bounds the size of agent.config_file.
const maxConfigFile = 64 << 10

// LoadFile reads the agent.config_file at path and applies it on top of
// base. See ParseFile for the format.
func LoadFile(path string, base Config) (Config, []Warning, error) {
	f, err := os.Open(path)
	if err != nil {
		return base, nil, fmt.Errorf("unable to open config file: %w", err)
	}
	defer f.Close()
	buf := make([]byte, maxConfigFile+1)
	n, _ := f.Read(buf)
	if n > maxConfigFile {
		return base, nil, fmt.Errorf("config file %s is larger than %d bytes", path, maxConfigFile)
	}
	c, w := ParseFile(string(buf[:n]), base)
	return c, w, nil
}

// ParseFile applies a configuration file on top of base. The format is the
// flat subset of TOML that Kata's agent configuration uses:
//
//	# comment
//	log_level = "debug"
//	debug_console = true
//	hotplug_timeout = 3
//
// Keys are the File names of Params (Kata's AgentConfig field names).
// Values are double-quoted strings, integers or true/false. Tables
// ([section]) and arrays are not supported: their entries are skipped with
// a warning.
func ParseFile(data string, base Config) (Config, []Warning) {
	c := base
	st := &state{}
	var warns []Warning
	section := ""
	for i, line := range strings.Split(data, "\n") {
		line = strings.TrimSpace(stripComment(line))
		if line == "" {
			continue
		}
		where := "line " + strconv.Itoa(i+1)
		if strings.HasPrefix(line, "[") {
			section = strings.Trim(line, "[] ")
			warns = append(warns, Warning{Key: where, Value: section, Msg: "tables are not supported, entries skipped"})
			continue
		}
		if section != "" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			warns = append(warns, Warning{Key: where, Value: line, Msg: "want key = value"})
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		p := byFile(k)
		if p == nil {
			warns = append(warns, Warning{Key: k, Value: v, Msg: "unknown config file key, ignored"})
			continue
		}
		val, err := tomlValue(v)
		if err == nil {
			err = p.set(&c, st, val, false)
		}
		if err != nil {
			warns = append(warns, Warning{Key: k, Value: v, Msg: err.Error() + "; keeping " + strconv.Quote(p.get(&c))})
		}
	}
	finish(&c)
	return c, warns
}

func byFile(k string) *Param {
	for i := range Params {
		if Params[i].File != "" && Params[i].File == k {
			return &Params[i]
		}
	}
	return nil
}

func stripComment(line string) string {
	inStr := false
	for i, r := range line {
		switch {
		case r == '"':
			inStr = !inStr
		case r == '#' && !inStr:
			return line[:i]
		}
	}
	return line
}

func tomlValue(v string) (string, error) {
	switch {
	case strings.HasPrefix(v, `"`):
		s, err := strconv.Unquote(v)
		if err != nil {
			return "", fmt.Errorf("bad string")
		}
		return s, nil
	case strings.HasPrefix(v, "["), strings.HasPrefix(v, "{"):
		return "", fmt.Errorf("arrays and inline tables are not supported")
	}
	return v, nil // bare: integer or boolean, validated by the setter
}
