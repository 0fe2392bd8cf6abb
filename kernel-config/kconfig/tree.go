package kconfig

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Tree is a best-effort reading of a kernel's Kconfig files: for each
// symbol, where it is defined, under which conditions it is visible, and
// who selects it. It understands config/menuconfig, choice, menu, if,
// depends on, prompts with `if`, select and source; it ignores defaults,
// ranges and help text. It is used only to explain, never to decide.
type Tree struct {
	syms     map[string]*Symbol
	warnings []string
}

// Symbol is one Kconfig symbol, possibly defined in several places.
type Symbol struct {
	Name       string
	Defs       []*Def
	SelectedBy []Selector
}

// Def is one `config NAME` block.
type Def struct {
	Pos     Pos
	Prompt  bool // has a prompt, so a user (or a fragment) can set it
	Depends Expr // own `depends on` plus enclosing if/menu/choice; nil = always
	Visible Expr // the prompt's `if` condition; nil = always
	Choice  *Pos // position of the enclosing choice, if any
}

// Selector is a `select NAME [if COND]` in another symbol.
type Selector struct {
	By   string
	If   Expr
	Pos  Pos
	Deps Expr // the selecting symbol's dependencies
}

// Warnings lists lines the reader skipped (unparsable expressions, missing
// sourced files). They do not make the tree unusable.
func (t *Tree) Warnings() []string { return t.warnings }

// Lookup returns the symbol or nil.
func (t *Tree) Lookup(name string) *Symbol { return t.syms[name] }

// SrcArch maps an ARCH value to the arch/ directory name.
func SrcArch(arch string) string {
	switch arch {
	case "x86_64", "i386", "x86":
		return "x86"
	case "aarch64":
		return "arm64"
	}
	return arch
}

// LoadTree reads <src>/Kconfig and everything it sources for arch.
func LoadTree(src, arch string) (*Tree, error) {
	t := &Tree{syms: map[string]*Symbol{}}
	r := &reader{tree: t, src: src, srcArch: SrcArch(arch), arch: arch, seen: map[string]bool{}}
	top := filepath.Join(src, "Kconfig")
	if _, err := os.Stat(top); err != nil {
		return nil, fmt.Errorf("kernel source %s: no top-level Kconfig: %w", src, err)
	}
	if err := r.file(top, nil); err != nil {
		return nil, err
	}
	return t, nil
}

type reader struct {
	tree          *Tree
	src           string
	srcArch, arch string
	seen          map[string]bool
}

// block is an open if/menu/choice with the condition it adds.
type block struct {
	kind string // "if", "menu", "choice"
	cond Expr
	pos  Pos
}

// entry is what `depends on`, `select`, `bool "..."` lines attach to.
type entry struct {
	sym  *Symbol // nil for menu/choice/comment entries
	def  *Def
	blk  *block // menu or choice: their `depends on` extend the block
	deps Expr
}

func (r *reader) warn(pos Pos, format string, args ...any) {
	if len(r.tree.warnings) < 200 {
		r.tree.warnings = append(r.tree.warnings, pos.String()+": "+fmt.Sprintf(format, args...))
	}
}

func (r *reader) expand(s string) string {
	s = strings.ReplaceAll(s, "$(SRCARCH)", r.srcArch)
	s = strings.ReplaceAll(s, "$(ARCH)", r.arch)
	return s
}

func (r *reader) file(path string, outer []*block) error {
	if r.seen[path] {
		return nil
	}
	r.seen[path] = true
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	rel, _ := filepath.Rel(r.src, path)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)

	stack := append([]*block(nil), outer...)
	var cur *entry
	inHelp, helpIndent := false, -1
	lineNo := 0
	var pending string
	for sc.Scan() {
		lineNo++
		raw := sc.Text()
		if inHelp {
			if strings.TrimSpace(raw) == "" {
				continue
			}
			ind := indent(raw)
			if helpIndent < 0 {
				helpIndent = ind
			}
			if ind >= helpIndent && ind > 0 {
				continue
			}
			inHelp = false
		}
		if strings.HasSuffix(raw, "\\") {
			pending += strings.TrimSuffix(raw, "\\") + " "
			continue
		}
		line := strings.TrimSpace(pending + raw)
		pending = ""
		if line == "" || line[0] == '#' {
			continue
		}
		pos := Pos{rel, lineNo}
		kw, rest, _ := strings.Cut(line, " ")
		if i := strings.IndexByte(kw, '\t'); i >= 0 {
			kw, rest = kw[:i], kw[i+1:]+" "+rest
		}
		rest = strings.TrimSpace(rest)
		cond := func() Expr {
			var c Expr
			for _, b := range stack {
				c = and(c, b.cond)
			}
			return c
		}
		parse := func(s string) Expr {
			e, err := ParseExpr(r.expand(s))
			if err != nil {
				r.warn(pos, "%v", err)
				return nil
			}
			return e
		}
		switch kw {
		case "config", "menuconfig":
			sym := r.tree.syms[rest]
			if sym == nil {
				sym = &Symbol{Name: rest}
				r.tree.syms[rest] = sym
			}
			d := &Def{Pos: pos}
			for i := len(stack) - 1; i >= 0; i-- {
				if stack[i].kind == "choice" {
					p := stack[i].pos
					d.Choice = &p
					break
				}
			}
			sym.Defs = append(sym.Defs, d)
			cur = &entry{sym: sym, def: d, deps: cond()}
			d.Depends = cur.deps
		case "choice":
			b := &block{kind: "choice", pos: pos}
			stack = append(stack, b)
			cur = &entry{blk: b}
		case "menu":
			b := &block{kind: "menu", pos: pos}
			stack = append(stack, b)
			cur = &entry{blk: b}
		case "if":
			stack = append(stack, &block{kind: "if", cond: parse(rest), pos: pos})
			cur = nil
		case "endif", "endmenu", "endchoice":
			want := strings.TrimPrefix(kw, "end")
			if len(stack) <= len(outer) || stack[len(stack)-1].kind != want {
				r.warn(pos, "unbalanced %s", kw)
			} else {
				stack = stack[:len(stack)-1]
			}
			cur = nil
		case "comment", "mainmenu":
			cur = &entry{} // its `depends on` must not attach to the previous symbol
		case "source", "rsource", "osource", "orsource":
			cur = nil
			p := r.expand(strings.Trim(rest, `"`))
			if strings.Contains(p, "$(") {
				r.warn(pos, "cannot expand %q", p)
				continue
			}
			var full string
			if kw == "rsource" || kw == "orsource" {
				full = filepath.Join(filepath.Dir(path), p)
			} else {
				full = filepath.Join(r.src, p)
			}
			matches, _ := filepath.Glob(full)
			if len(matches) == 0 && !strings.HasPrefix(kw, "o") {
				r.warn(pos, "sourced file %s not found", p)
			}
			for _, m := range matches {
				if err := r.file(m, stack); err != nil {
					r.warn(pos, "%v", err)
				}
			}
		case "depends":
			if cur == nil {
				continue
			}
			e := parse(strings.TrimSpace(strings.TrimPrefix(rest, "on")))
			switch {
			case cur.def != nil:
				cur.def.Depends = and(cur.def.Depends, e)
			case cur.blk != nil:
				cur.blk.cond = and(cur.blk.cond, e)
			}
		case "bool", "tristate", "string", "int", "hex", "prompt":
			if cur == nil || cur.def == nil {
				continue
			}
			if kw == "prompt" || strings.HasPrefix(rest, `"`) || strings.HasPrefix(rest, `'`) {
				cur.def.Prompt = true
				if _, c, ok := cutPromptIf(rest); ok {
					cur.def.Visible = parse(c)
				}
			}
		case "select":
			if cur == nil || cur.sym == nil {
				continue
			}
			name, c, _ := strings.Cut(rest, " if ")
			name = strings.TrimSpace(name)
			target := r.tree.syms[name]
			if target == nil {
				target = &Symbol{Name: name}
				r.tree.syms[name] = target
			}
			s := Selector{By: cur.sym.Name, Pos: pos, Deps: cur.def.Depends}
			if c != "" {
				s.If = parse(c)
			}
			target.SelectedBy = append(target.SelectedBy, s)
		case "help", "---help---":
			inHelp, helpIndent = true, -1
		}
	}
	return sc.Err()
}

// cutPromptIf splits `"prompt text" if COND`.
func cutPromptIf(s string) (prompt, cond string, ok bool) {
	if len(s) == 0 {
		return "", "", false
	}
	q := s[0]
	end := strings.IndexByte(s[1:], q)
	if end < 0 {
		return s, "", false
	}
	after := strings.TrimSpace(s[end+2:])
	c, ok := strings.CutPrefix(after, "if ")
	return s[:end+2], strings.TrimSpace(c), ok
}

func indent(s string) int {
	n := 0
	for _, c := range s {
		switch c {
		case ' ':
			n++
		case '\t':
			n += 8 - n%8
		default:
			return n
		}
	}
	return n
}

// Explain says why name has a value other than want in final.
func (t *Tree) Explain(name, want string, final Config) string {
	sym := t.syms[name]
	if sym == nil || len(sym.Defs) == 0 {
		return fmt.Sprintf("no `config %s` in this kernel's Kconfig for this arch (misspelt, renamed, removed, or another arch's option)", name)
	}
	got := final.Get(name)
	if want == "n" {
		var on []string
		for _, s := range sym.SelectedBy {
			if tristate(final.Get(s.By)) > 0 && (s.If == nil || s.If.eval(final) > 0) {
				on = append(on, fmt.Sprintf("CONFIG_%s=%s (%s)", s.By, final.Get(s.By), s.Pos))
			}
		}
		if len(on) > 0 {
			return "forced on by select from " + strings.Join(on, ", ")
		}
		if !anyPrompt(sym) {
			return "has no prompt, so its default decides and a fragment cannot turn it off"
		}
		for _, d := range sym.Defs {
			if d.Prompt && d.Visible != nil && d.Visible.eval(final) == 0 {
				return fmt.Sprintf("its prompt (%s) is hidden unless %s, so its default decides", d.Pos, d.Visible)
			}
		}
		return "turned on by its default or another option; set it explicitly elsewhere"
	}
	w := tristate(want)
	var reasons []string
	for _, d := range sym.Defs {
		if d.Depends != nil && d.Depends.eval(final) == 0 {
			reasons = append(reasons, fmt.Sprintf("depends on %s (%s): unmet %s",
				d.Depends, d.Pos, strings.Join(t.hint(unmet(d.Depends, 1, final)), ", ")))
			continue
		}
		if d.Depends != nil && d.Depends.eval(final) < w && w > 0 {
			reasons = append(reasons, fmt.Sprintf("depends on %s (%s) which is only m, so at most m: %s",
				d.Depends, d.Pos, strings.Join(unmet(d.Depends, w, final), ", ")))
			continue
		}
		if d.Visible != nil && d.Visible.eval(final) == 0 {
			reasons = append(reasons, fmt.Sprintf("its prompt (%s) is only shown if %s: unmet %s",
				d.Pos, d.Visible, strings.Join(t.hint(unmet(d.Visible, 1, final)), ", ")))
			continue
		}
		if d.Choice != nil {
			reasons = append(reasons, fmt.Sprintf("is a member of the choice at %s; another member was chosen", d.Choice))
			continue
		}
	}
	if len(reasons) == 0 && !anyPrompt(sym) {
		sel := make([]string, 0, len(sym.SelectedBy))
		for _, s := range sym.SelectedBy {
			sel = append(sel, s.By)
		}
		sort.Strings(sel)
		sel = compact(sel)
		msg := "has no prompt: only `select` or its default can set it"
		if len(sel) > 0 {
			msg += "; selected by (none enabled): " + strings.Join(clipList(sel, 8), ", ")
		}
		reasons = append(reasons, msg)
	}
	if len(reasons) == 0 {
		if want != "y" && want != "m" {
			return fmt.Sprintf("value %s was replaced by %s (out of `range`, or wrong type)", want, got)
		}
		return "dependencies look met to this reader; check `make ARCH=... menuconfig` for " + name
	}
	return strings.Join(reasons, "; ")
}

func anyPrompt(s *Symbol) bool {
	for _, d := range s.Defs {
		if d.Prompt {
			return true
		}
	}
	return false
}

func compact(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

func clipList(s []string, n int) []string {
	if len(s) <= n {
		return s
	}
	return append(s[:n:n], fmt.Sprintf("and %d more", len(s)-n))
}

// hint annotates unmet terms "NAME=n" whose symbol has no prompt with the
// symbols that select it, since those are what a fragment must enable.
func (t *Tree) hint(terms []string) []string {
	for i, term := range terms {
		name, ok := strings.CutSuffix(term, "=n")
		if !ok {
			continue
		}
		sym := t.syms[name]
		if sym == nil || anyPrompt(sym) || len(sym.SelectedBy) == 0 {
			continue
		}
		var by []string
		for _, s := range sym.SelectedBy {
			by = append(by, s.By)
		}
		sort.Strings(by)
		terms[i] = term + " (no prompt; selected by " + strings.Join(clipList(compact(by), 4), ", ") + ")"
	}
	return terms
}
