// Answers (`CatalogResult`, `ResultTable`, `Aggregate` specs) are defined next to the engine
// that computes them; a client program should need `import TesseraClient` only.
@_exported import TesseraCompute
