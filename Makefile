.PHONY: build test demo bench deb
build:
	go build -o bin/vdisk ./cmd/vdisk
test:
	scripts/test.sh
demo:
	scripts/demo.sh
bench:
	bench/nbd.sh
deb:
	scripts/package.sh
