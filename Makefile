# The commands of the README, and lint on its own.
.PHONY: run test bench baselines lint

run:
	./scripts/run

test:
	./scripts/test

bench:
	./scripts/bench

baselines:
	./scripts/baselines

lint:
	. scripts/lib.sh && ensure_go_tool staticcheck honnef.co/go/tools/cmd/staticcheck "$$STATICCHECK_VERSION" && \
	for m in $$(go list -m -f '{{.Dir}}'); do (cd $$m && gofmt -l . && go vet ./... && "$$STATE_BIN/staticcheck" ./...) || exit 1; done
