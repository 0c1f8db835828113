module nodepingexporter/benchmarks/responder

go 1.22
