// Command gateway runs a gateway replica: the HTTP API and the websocket
// connections, routed to the other services over NATS.
package main

import (
	"context"
	"os"

	"github.com/communications/communications/libs/svcmain"
	"github.com/communications/communications/libs/telemetry"
	"github.com/communications/communications/services/gateway/gatewaysvc"
)

func main() {
	os.Exit(svcmain.Main("gateway", gatewaysvc.EnvPrefix, runGateway))
}

// runGateway runs the gateway without reporting its addresses.
func runGateway(ctx context.Context, cfg gatewaysvc.Config, tel *telemetry.Telemetry) error {
	return gatewaysvc.Run(ctx, cfg, tel, nil)
}
