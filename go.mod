module github.com/kpf-dev/kpf

go 1.26.0
