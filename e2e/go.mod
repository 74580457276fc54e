module github.com/communications/communications/e2e

go 1.26
