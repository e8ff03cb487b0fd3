package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"kiln.dev/kiln/internal/errdefs"
	"kiln.dev/kiln/internal/network"
)

func newPortCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "port VM [GUESTPORT[/PROTO]]",
		Short: "List a running VM's published ports, or where one guest port is published",
		Long: `List the published ports of a running VM as docker port does
("80/tcp -> 0.0.0.0:8080"), with ephemeral host ports as they were picked at
its last start. With GUESTPORT, print only where that port is published
(host address and port), and fail when it is not.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var want *network.PortMapping
			if len(args) == 2 {
				p, err := parseGuestPort(args[1])
				if err != nil {
					return err
				}
				want = &p
			}
			ctx := cmd.Context()
			cl, err := connect(ctx, g, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			v, err := cl.Inspect(ctx, args[0])
			if err != nil {
				return err
			}
			ports := v.Ports
			network.Sort(ports)
			out := cmd.OutOrStdout()
			found := false
			for _, p := range ports {
				if want == nil {
					fmt.Fprintln(out, network.FormatPort(p))
					continue
				}
				if p.GuestPort == want.GuestPort && p.Protocol == want.Protocol {
					_, hostPart, _ := strings.Cut(network.FormatPort(p), " -> ")
					fmt.Fprintln(out, hostPart)
					found = true
				}
			}
			if want != nil && !found {
				return fmt.Errorf("no public port '%s' published for %s: %w", network.PortKey(*want), args[0], errdefs.ErrNotFound)
			}
			return nil
		},
	}
}

// parseGuestPort parses port's PORT[/PROTO] argument (tcp by default).
func parseGuestPort(s string) (network.PortMapping, error) {
	port, proto, ok := strings.Cut(s, "/")
	if !ok {
		proto = network.TCP
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 || (proto != network.TCP && proto != network.UDP) {
		return network.PortMapping{}, errdefs.Invalid(fmt.Sprintf("invalid port %q: want PORT[/tcp|/udp], port 1-65535", s))
	}
	return network.PortMapping{GuestPort: n, Protocol: proto}, nil
}
