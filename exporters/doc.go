// Package exporters writes and checks audit exports: the ledger's events as a
// file of rows (Parquet, JSON Lines or JSON), and a manifest beside it, signed
// with the ledger's Ed25519 key, that says which rows the file holds and how
// each token's hash chain starts and ends in it.
//
// A row (Row) is one event's domain.Record plus its stream sequence and hash,
// in the columns listed by Columns. Empty optional columns are null in every
// format. Each row's hash is its record's domain.Record.ChainHash, and its
// prev_hash the hash of the token's event before it, so a reader with only
// the file, the manifest and the ledger's public key can check that no row
// was changed, dropped, added or moved. Verify does exactly that and says in
// plain words what is wrong.
//
// Writers stream: memory does not grow with the number of rows (a Parquet
// writer holds one row group at a time, a Summary one entry per token), and a
// verifier's grows with the number of tokens.
//
// Typical use, on the exporting side:
//
//	ex, _ := exporters.NewExport(exporters.FormatParquet, w)
//	for each event: ex.Write(exporters.RowOf(seq, event))
//	ex.Close()
//	m, _ := ex.Manifest(exporters.Manifest{OrganizationID: org, StreamSequence: cut, ...})
//	signed, _ := exporters.SignManifest(m, key)
//
// and on the checking side:
//
//	report := exporters.Verify(file, size, signed, trustedPublicKey)
package exporters
