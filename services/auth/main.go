// Command auth runs the auth service: user accounts, password checks and
// sessions.
package main

import (
	"os"

	"github.com/communications/communications/libs/svcmain"
	"github.com/communications/communications/services/auth/authsvc"
)

func main() {
	os.Exit(svcmain.Main("auth", authsvc.EnvPrefix, authsvc.Run))
}
