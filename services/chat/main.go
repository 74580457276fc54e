// Command chat runs the chat service: chats, membership, permissions and
// accepting messages into the durable message stream.
package main

import (
	"os"

	"github.com/communications/communications/libs/svcmain"
	"github.com/communications/communications/services/chat/chatsvc"
)

func main() {
	os.Exit(svcmain.Main("chat", chatsvc.EnvPrefix, chatsvc.Run))
}
