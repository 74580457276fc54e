# The two commands of the README, and lint on its own.
.PHONY: run test lint

run:
	./scripts/run

test:
	./scripts/test

lint:
	. scripts/lib.sh && ensure_go_tool staticcheck honnef.co/go/tools/cmd/staticcheck "$$STATICCHECK_VERSION" && \
	for m in $$(go list -m -f '{{.Dir}}'); do (cd $$m && gofmt -l . && go vet ./... && "$$STATE_BIN/staticcheck" ./...) || exit 1; done
