// Package httpapi is the gateway's HTTP transport: the JSON API under
// /api/v1, the websocket endpoint /ws, the health endpoints and the web app.
// Every route is listed in Routes.
package httpapi

import (
	"github.com/gin-gonic/gin"
	"go.opentelemetry.io/contrib/instrumentation/github.com/gin-gonic/gin/otelgin"
)

// Routes registers every route of the gateway on r.
func (a *API) Routes(r *gin.Engine) {
	r.Use(gin.Recovery(), otelgin.Middleware("gateway",
		otelgin.WithTracerProvider(a.tp), otelgin.WithPropagators(a.propagator)),
		a.logErrors, limitBody(MaxBodyBytes), securityHeaders)
	r.GET("/healthz", a.healthz)
	r.GET("/readyz", a.readyz)
	r.GET("/ws", a.websocket)

	v1 := r.Group("/api/v1", a.csrf)
	v1.POST("/auth/register", a.register)
	v1.POST("/auth/login", a.login)
	v1.POST("/auth/logout", a.logout)
	v1.GET("/me", a.authenticated, a.me)
	v1.GET("/chats", a.authenticated, a.listChats)
	v1.POST("/chats", a.authenticated, a.limitWrites, a.createChat)
	v1.GET("/chats/:id", a.authenticated, a.getChat)
	v1.PATCH("/chats/:id", a.authenticated, a.limitWrites, a.updateChat)
	v1.GET("/chats/:id/messages", a.authenticated, a.history)
	v1.PUT("/chats/:id/read", a.authenticated, a.limitWrites, a.markRead)
	v1.POST("/direct", a.authenticated, a.limitWrites, a.startDirect)

	// Everything else: the web app's files, and its pages for any other
	// path (the app shows its own 404 page); unknown API paths get JSON.
	r.NoRoute(a.web())
}
