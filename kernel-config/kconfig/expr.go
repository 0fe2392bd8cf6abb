package kconfig

import (
	"fmt"
	"strconv"
	"strings"
)

// Expr is a Kconfig expression (`depends on`, `if`, `select ... if`).
type Expr interface {
	// eval returns the tristate value 0 (n), 1 (m) or 2 (y).
	eval(c Config) int
	String() string
}

type (
	exprSym struct{ name string } // a symbol or constant (y, m, n, "str", 123)
	exprNot struct{ x Expr }
	exprAnd struct{ l, r Expr }
	exprOr  struct{ l, r Expr }
	exprCmp struct {
		op   string
		l, r *exprSym
	}
)

func tristate(v string) int {
	switch v {
	case "y":
		return 2
	case "m":
		return 1
	}
	return 0
}

// value is the symbol's value as Kconfig compares it: constants are
// themselves, macros ($(...)) are assumed true, strings lose their quotes.
func (e *exprSym) value(c Config) string {
	switch {
	case e.name == "y" || e.name == "m" || e.name == "n":
		return e.name
	case strings.HasPrefix(e.name, "$("):
		return "y"
	case strings.HasPrefix(e.name, `"`) || strings.HasPrefix(e.name, "'"):
		return unquote(e.name)
	case e.name != "" && (isDigit(e.name[0]) || e.name[0] == '-'):
		return e.name
	}
	v, ok := c[e.name]
	if !ok {
		return "n"
	}
	return unquote(v)
}

func unquote(v string) string {
	if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
		if s, err := strconv.Unquote(v); err == nil && v[0] == '"' {
			return s
		}
		return v[1 : len(v)-1]
	}
	return v
}

// operand is the value in a comparison: Kconfig treats an unknown word
// there as a constant string, so a name with lower-case letters that the
// config does not have (x86, arm64) stands for itself.
func (e *exprSym) operand(c Config) string {
	if _, ok := c[e.name]; !ok && isWordStart(e.name) && strings.ToUpper(e.name) != e.name {
		return e.name
	}
	return e.value(c)
}

func (e *exprSym) eval(c Config) int { return tristate(e.value(c)) }
func (e *exprSym) String() string    { return e.name }
func (e *exprNot) eval(c Config) int { return 2 - e.x.eval(c) }
func (e *exprNot) String() string    { return "!" + paren(e.x) }
func (e *exprAnd) eval(c Config) int { return min(e.l.eval(c), e.r.eval(c)) }
func (e *exprAnd) String() string    { return paren(e.l) + " && " + paren(e.r) }
func (e *exprOr) eval(c Config) int  { return max(e.l.eval(c), e.r.eval(c)) }
func (e *exprOr) String() string     { return paren(e.l) + " || " + paren(e.r) }
func (e *exprCmp) String() string    { return e.l.name + " " + e.op + " " + e.r.name }

func (e *exprCmp) eval(c Config) int {
	a, b := e.l.operand(c), e.r.operand(c)
	var cmp int
	x, errA := strconv.ParseInt(a, 0, 64)
	y, errB := strconv.ParseInt(b, 0, 64)
	switch {
	case errA == nil && errB == nil:
		cmp = compareInt(x, y)
	default:
		cmp = strings.Compare(a, b)
	}
	ok := false
	switch e.op {
	case "=":
		ok = cmp == 0
	case "!=":
		ok = cmp != 0
	case "<":
		ok = cmp < 0
	case "<=":
		ok = cmp <= 0
	case ">":
		ok = cmp > 0
	case ">=":
		ok = cmp >= 0
	}
	if ok {
		return 2
	}
	return 0
}

func compareInt(x, y int64) int {
	switch {
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}

func paren(e Expr) string {
	switch e.(type) {
	case *exprAnd, *exprOr:
		return "(" + e.String() + ")"
	}
	return e.String()
}

// unmet lists the terms of e that keep it below want, each with its value
// in c, e.g. "BLK_DEV=n". For a false `A || B` the whole disjunction is
// reported, since any one of its terms would do.
func unmet(e Expr, want int, c Config) []string {
	if e.eval(c) >= want {
		return nil
	}
	switch e := e.(type) {
	case *exprAnd:
		return dedupe(append(unmet(e.l, want, c), unmet(e.r, want, c)...))
	case *exprSym:
		return []string{e.name + "=" + e.value(c)}
	case *exprNot:
		if s, ok := e.x.(*exprSym); ok {
			return []string{s.name + "=" + s.value(c) + " (must be n)"}
		}
	case *exprCmp:
		return []string{fmt.Sprintf("%s (%s is %s)", e, e.l.name, e.l.value(c))}
	}
	return []string{"(" + annotate(e, c) + ")"}
}

// annotate renders e with each symbol's value, for disjunctions.
func annotate(e Expr, c Config) string {
	switch e := e.(type) {
	case *exprSym:
		if e.value(c) == e.name {
			return e.name
		}
		return e.name + "=" + e.value(c)
	case *exprNot:
		return "!" + annotate(e.x, c)
	case *exprAnd:
		return annotate(e.l, c) + " && " + annotate(e.r, c)
	case *exprOr:
		return annotate(e.l, c) + " || " + annotate(e.r, c)
	case *exprCmp:
		return fmt.Sprintf("%s [%s=%s]", e, e.l.name, e.l.value(c))
	}
	return e.String()
}

// and joins two conditions, either of which may be nil (always true).
func and(a, b Expr) Expr {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	}
	return &exprAnd{a, b}
}

// ParseExpr parses a Kconfig expression.
func ParseExpr(s string) (Expr, error) {
	toks, err := tokenize(s)
	if err != nil {
		return nil, err
	}
	if len(toks) == 0 {
		return nil, fmt.Errorf("empty expression")
	}
	p := &exprParser{toks: toks}
	e, err := p.or()
	if err != nil {
		return nil, err
	}
	if p.i != len(p.toks) {
		return nil, fmt.Errorf("unexpected %q in %q", p.toks[p.i], s)
	}
	return e, nil
}

func tokenize(s string) ([]string, error) {
	var toks []string
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t':
			i++
		case c == '#':
			return toks, nil // trailing comment
		case c == '(' || c == ')':
			toks = append(toks, string(c))
			i++
		case strings.HasPrefix(s[i:], "&&") || strings.HasPrefix(s[i:], "||") ||
			strings.HasPrefix(s[i:], "!=") || strings.HasPrefix(s[i:], "<=") || strings.HasPrefix(s[i:], ">="):
			toks = append(toks, s[i:i+2])
			i += 2
		case c == '!' || c == '=' || c == '<' || c == '>':
			toks = append(toks, string(c))
			i++
		case c == '"' || c == '\'':
			j := i + 1
			for j < len(s) && s[j] != c {
				if s[j] == '\\' {
					j++
				}
				j++
			}
			if j >= len(s) {
				return nil, fmt.Errorf("unterminated string in %q", s)
			}
			toks = append(toks, s[i:j+1]) // kept as written, so it renders back
			i = j + 1
		case c == '$' && i+1 < len(s) && s[i+1] == '(':
			depth, j := 0, i+1
			for ; j < len(s); j++ {
				if s[j] == '(' {
					depth++
				} else if s[j] == ')' {
					depth--
					if depth == 0 {
						break
					}
				}
			}
			if j >= len(s) {
				return nil, fmt.Errorf("unterminated $( in %q", s)
			}
			toks = append(toks, s[i:j+1])
			i = j + 1
		case isWord(c):
			j := i
			for j < len(s) && isWord(s[j]) {
				j++
			}
			toks = append(toks, s[i:j])
			i = j
		default:
			return nil, fmt.Errorf("unexpected %q in %q", c, s)
		}
	}
	return toks, nil
}

func isWord(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.'
}

type exprParser struct {
	toks []string
	i    int
}

func (p *exprParser) peek() string {
	if p.i < len(p.toks) {
		return p.toks[p.i]
	}
	return ""
}

func (p *exprParser) or() (Expr, error) {
	l, err := p.and()
	for err == nil && p.peek() == "||" {
		p.i++
		var r Expr
		if r, err = p.and(); err == nil {
			l = &exprOr{l, r}
		}
	}
	return l, err
}

func (p *exprParser) and() (Expr, error) {
	l, err := p.unary()
	for err == nil && p.peek() == "&&" {
		p.i++
		var r Expr
		if r, err = p.unary(); err == nil {
			l = &exprAnd{l, r}
		}
	}
	return l, err
}

func (p *exprParser) unary() (Expr, error) {
	switch p.peek() {
	case "!":
		p.i++
		x, err := p.unary()
		if err != nil {
			return nil, err
		}
		return &exprNot{x}, nil
	case "(":
		p.i++
		x, err := p.or()
		if err != nil {
			return nil, err
		}
		if p.peek() != ")" {
			return nil, fmt.Errorf("missing ')'")
		}
		p.i++
		return x, nil
	}
	l, err := p.symbol()
	if err != nil {
		return nil, err
	}
	switch op := p.peek(); op {
	case "=", "!=", "<", "<=", ">", ">=":
		p.i++
		r, err := p.symbol()
		if err != nil {
			return nil, err
		}
		return &exprCmp{op, l, r}, nil
	}
	return l, nil
}

func (p *exprParser) symbol() (*exprSym, error) {
	t := p.peek()
	switch t {
	case "", "(", ")", "!", "&&", "||", "=", "!=", "<", "<=", ">", ">=":
		if t == "" {
			return nil, fmt.Errorf("expression ends early")
		}
		return nil, fmt.Errorf("expected a symbol, got %q", t)
	}
	p.i++
	return &exprSym{t}, nil
}

// dedupe drops repeated terms, keeping the first of each.
func dedupe(s []string) []string {
	seen := map[string]bool{}
	out := s[:0]
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

func isWordStart(s string) bool {
	return s != "" && (s[0] >= 'A' && s[0] <= 'Z' || s[0] >= 'a' && s[0] <= 'z' || s[0] == '_')
}
