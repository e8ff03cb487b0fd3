package main

import (
	"context"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"kiln.dev/kiln/client"
	"kiln.dev/kiln/internal/daemon"
	"kiln.dev/kiln/internal/kernel"
)

// The nouns of commands' arguments that shell completion fills in from
// the daemon (or, for kernels, the root's kernel store).
const (
	nounVM      = "VM"
	nounImage   = "IMAGE"
	nounNetwork = "NETWORK"
	nounVolume  = "VOLUME"
	nounKernel  = "KERNEL"
)

// addCompletions gives every command whose usage names its arguments
// (VM..., IMAGE, NETWORK...) completion of those from the root's daemon.
// A daemon that does not answer completes nothing: completing never
// starts one.
func addCompletions(root *cobra.Command, g *globals) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		use := c.Use
		// Under volume and network, NAME is one of those.
		if p := c.Parent(); p != nil && (p.Name() == "volume" || p.Name() == "network") {
			noun := map[string]string{"volume": nounVolume, "network": nounNetwork}[p.Name()]
			use = strings.NewReplacer(" NAME...", " "+noun+"...", " NAME", " "+noun, "[NAME", "["+noun).Replace(use)
		}
		if c.ValidArgsFunction == nil {
			if nouns := argNouns(use); len(nouns) > 0 {
				c.ValidArgsFunction = func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
					noun, ok := nounAt(nouns, len(args))
					if !ok {
						return nil, cobra.ShellCompDirectiveNoFileComp
					}
					return complete(g, noun, toComplete), cobra.ShellCompDirectiveNoFileComp
				}
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// argNouns are the positional nouns of a usage line ("rm [-f] VM..." →
// [VM...]), flags and their values left out.
func argNouns(use string) []string {
	var out []string
	inFlag, any := false, false
	for _, f := range strings.Fields(use)[1:] {
		if inFlag {
			inFlag = !strings.HasSuffix(f, "]")
			continue
		}
		if strings.HasPrefix(f, "[-") || strings.HasPrefix(f, "-") {
			inFlag = strings.HasPrefix(f, "[") && !strings.HasSuffix(f, "]")
			continue
		}
		base := strings.TrimSuffix(strings.Trim(f, "[]"), "...")
		switch base {
		case nounVM, nounImage, nounNetwork, nounVolume, nounKernel:
			out = append(out, strings.Trim(f, "[]"))
			any = true
		default:
			out = append(out, "") // another argument, completed by nothing
		}
	}
	if !any {
		return nil
	}
	return out
}

// nounAt is the noun of argument i, a trailing "..." repeating.
func nounAt(nouns []string, i int) (string, bool) {
	if i < len(nouns) {
		n := strings.TrimSuffix(nouns[i], "...")
		return n, n != ""
	}
	last := nouns[len(nouns)-1]
	if strings.HasSuffix(last, "...") {
		return strings.TrimSuffix(last, "..."), true
	}
	return "", false
}

func complete(g *globals, noun, prefix string) []string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var names []string
	if noun == nounKernel {
		ks, err := kernel.NewStore(g.root).List()
		if err != nil {
			return nil
		}
		for _, k := range ks {
			names = append(names, k.Name)
		}
	} else {
		cl := client.New(daemon.SocketPath(g.root))
		switch noun {
		case nounVM:
			vms, _ := cl.List(ctx)
			for _, v := range vms {
				names = append(names, v.Name)
			}
		case nounImage:
			imgs, _ := cl.Images(ctx)
			for _, i := range imgs {
				for _, t := range i.RepoTags {
					repo, tag := splitTag(t)
					names = append(names, repo+":"+tag)
				}
			}
		case nounNetwork:
			nets, _ := cl.Networks(ctx)
			for _, n := range nets {
				names = append(names, n.Name)
			}
		case nounVolume:
			vols, _ := cl.Volumes(ctx)
			for _, v := range vols {
				names = append(names, v.Name)
			}
		}
	}
	var out []string
	for _, n := range names {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	return out
}
