// Package httpapi is the gateway's HTTP transport: the JSON API under
// /api/v1, the websocket endpoint /ws, and the health endpoints. Every route
// is listed in Routes.
package httpapi

import (
	"github.com/gin-gonic/gin"
	"go.opentelemetry.io/contrib/instrumentation/github.com/gin-gonic/gin/otelgin"
)

// Routes registers every route of the gateway on r.
func (a *API) Routes(r *gin.Engine) {
	r.Use(gin.Recovery(), otelgin.Middleware("gateway",
		otelgin.WithTracerProvider(a.tp), otelgin.WithPropagators(a.propagator)),
		a.logErrors, limitBody(MaxBodyBytes))
	r.GET("/healthz", a.healthz)
	r.GET("/readyz", a.readyz)
	r.GET("/ws", a.websocket)

	v1 := r.Group("/api/v1")
	v1.POST("/auth/register", a.register)
	v1.POST("/auth/login", a.login)
	v1.POST("/auth/logout", a.logout)
	v1.GET("/me", a.authenticated, a.me)
	v1.GET("/chats", a.authenticated, a.listChats)
	v1.GET("/chats/:id/messages", a.authenticated, a.history)
	r.NoRoute(a.notFound)
}
