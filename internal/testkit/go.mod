module github.com/poolplane/poolplane/internal/testkit

go 1.26.0
