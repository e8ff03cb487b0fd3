package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"kiln.dev/kiln/api"
	"kiln.dev/kiln/client"
	"kiln.dev/kiln/internal/errdefs"
)

func newNetworkCmd(g *globals) *cobra.Command {
	group := &cobra.Command{Use: "network", Short: "Manage bridge networks (TAP, static IPs, firewall; need CAP_NET_ADMIN)"}
	group.AddCommand(newNetworkCreateCmd(g), newNetworkLsCmd(g), newNetworkInspectCmd(g), newNetworkRmCmd(g))
	return group
}

func newNetworkCreateCmd(g *globals) *cobra.Command {
	var req api.NetworkCreate
	var labels, labelFiles []string
	c := &cobra.Command{
		Use:   "create NAME [--subnet CIDR [--gateway IP]] [--egress] [--isolate-vms]",
		Short: "Create a bridge network: VMs on it reach only its gateway unless --egress",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			var err error
			if req.Labels, err = readLabels(labels, labelFiles); err != nil {
				return err
			}
			ctx := cmd.Context()
			cl, err := connect(ctx, g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			n, err := cl.CreateNetwork(ctx, req)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), n.Name)
			return nil
		},
	}
	fl := c.Flags()
	fl.StringArrayVarP(&labels, "label", "l", nil, "set a label, KEY=VALUE (repeatable)")
	fl.StringArrayVar(&labelFiles, "label-file", nil, "read labels from a file, a KEY=VALUE per line")
	fl.StringVar(&req.Subnet, "subnet", "", "IPv4 subnet of the network, e.g. 10.99.0.0/24 (must not overlap another network or a route of the host); default: the first free /24 of 10.89.0.0/16")
	fl.StringVar(&req.Gateway, "gateway", "", "the bridge's address in the subnet (default: its first address)")
	fl.BoolVar(&req.Egress, "egress", false, "let VMs reach addresses beyond the network (masqueraded)")
	fl.BoolVar(&req.IsolateVMs, "isolate-vms", false, "stop the network's VMs reaching each other")
	return c
}

func newNetworkLsCmd(g *globals) *cobra.Command {
	var quiet bool
	var filters []string
	c := &cobra.Command{
		Use:     "ls [-q] [--filter KEY=VALUE]",
		Aliases: []string{"list"},
		Short:   "List bridge networks",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			want := map[string][]string{}
			for _, f := range filters {
				k, v, ok := strings.Cut(f, "=")
				if !ok || k != "name" && k != "label" {
					return errdefs.Invalid(fmt.Sprintf("invalid filter %q: use name=NAME or label=KEY[=VALUE]", f))
				}
				want[k] = append(want[k], v)
			}
			ctx := cmd.Context()
			cl, err := connect(ctx, g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			all, err := cl.Networks(ctx)
			if err != nil {
				return err
			}
			var ns []api.Network
			for _, n := range all {
				if matchKeyed(want, func(k, val string) bool {
					if k == "name" {
						return strings.Contains(n.Name, val)
					}
					lk, lv, hasValue := strings.Cut(val, "=")
					got, has := n.Labels[lk]
					return has && (!hasValue || got == lv)
				}) {
					ns = append(ns, n)
				}
			}
			printNetworks(cmd.OutOrStdout(), ns, quiet)
			return nil
		},
	}
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "only names")
	c.Flags().StringArrayVarP(&filters, "filter", "f", nil, "filter, as docker's: name=NAME, label=KEY[=VALUE]")
	return c
}

// matchKeyed applies filters by key: values of one key match any, keys
// all; match says whether one KEY=VALUE matches.
func matchKeyed(want map[string][]string, match func(k, v string) bool) bool {
	for k, vals := range want {
		ok := false
		for _, v := range vals {
			ok = ok || match(k, v)
		}
		if !ok {
			return false
		}
	}
	return true
}

func printNetworks(w io.Writer, ns []api.Network, quiet bool) {
	if quiet {
		for _, n := range ns {
			fmt.Fprintln(w, n.Name)
		}
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSUBNET\tGATEWAY\tBRIDGE\tEGRESS\tISOLATE VMS\tVMS")
	for _, n := range ns {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%v\t%d\n", n.Name, n.Subnet, n.Gateway, n.Bridge, n.Egress, n.IsolateVMs, len(n.VMs))
	}
	tw.Flush()
}

func newNetworkInspectCmd(g *globals) *cobra.Command {
	return inspectCmd(g, "NETWORK", "Show networks and their VMs' addresses, as JSON or through a Go template",
		func(cl *client.Client) func(context.Context, string) (api.Network, error) { return cl.InspectNetwork })
}

func newNetworkRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NETWORK...",
		Aliases: []string{"remove"},
		Short:   "Remove networks no VM is on, and their bridges",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cl, err := connect(ctx, g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			var errs []error
			for _, a := range args {
				if err := cl.RemoveNetwork(ctx, a); err != nil {
					errs = append(errs, err)
					continue
				}
				fmt.Fprintln(cmd.OutOrStdout(), strings.TrimSpace(a))
			}
			return errors.Join(errs...)
		},
	}
}
