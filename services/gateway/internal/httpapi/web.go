package httpapi

import (
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/communications/communications/libs/protocol"
)

// securityHeaders sets the headers every answer carries. The content
// security policy allows nothing from other origins: the web app loads no
// CDN, font or script from elsewhere.
func securityHeaders(c *gin.Context) {
	h := c.Writer.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Content-Security-Policy", "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
	c.Next()
}

// web serves the built web app from cfg.WebDir: existing files as they are
// (assets cached for a long time, since their names change with their
// content), and index.html for every other page, where the app routes.
func (a *API) web() gin.HandlerFunc {
	dir := a.cfg.WebDir
	return func(c *gin.Context) {
		p := c.Request.URL.Path
		if strings.HasPrefix(p, "/api/") || dir == "" || (c.Request.Method != http.MethodGet && c.Request.Method != http.MethodHead) {
			a.notFound(c)
			return
		}
		clean := path.Clean("/" + p)
		file := filepath.Join(dir, filepath.FromSlash(clean))
		if st, err := os.Stat(file); err == nil && !st.IsDir() {
			if strings.HasPrefix(clean, "/assets/") {
				c.Header("Cache-Control", "public, max-age=31536000, immutable")
			}
			c.File(file)
			return
		}
		if strings.HasPrefix(clean, "/assets/") || path.Ext(clean) != "" {
			fail(c, protocol.CodeNotFound, "no such file")
			return
		}
		index := filepath.Join(dir, "index.html")
		if _, err := os.Stat(index); err != nil {
			fail(c, protocol.CodeNotFound, "the web app is not built")
			return
		}
		c.Header("Cache-Control", "no-cache")
		c.File(index)
	}
}
