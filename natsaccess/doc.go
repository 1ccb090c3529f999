// Package natsaccess decides who may do what on the NATS servers the ledger
// runs or is configured for, and gives services what they need to connect.
//
// Four accounts keep the ledger's reading apart from everyone else's:
//
//   - LEDGER holds the stream (the source of truth) and the ledger's own
//     consumers. Only the ledger logs in there, with a password.
//   - MIRROR holds a read-only mirror of the stream, with the same name,
//     subjects and sequences, and the services' consumers. Nobody logs in.
//   - SERVICES is where services land. Nobody logs in there with a
//     password: a service presents a TokenLedger API token (nats.Token),
//     the server asks the ledger (NATS auth callout), and the ledger answers
//     with permissions computed from the token (Grant). It has no JetStream
//     of its own, only MIRROR's consumer create, info, next and ack,
//     imported under APIPrefix: the server answers a pull request from the
//     consumer's account to whatever reply subject the request named, and
//     in SERVICES no such answer can reach a JetStream API.
//   - SYS, the servers' system account, where the ledger watches and cuts
//     service connections whose token was rotated, deleted or changed
//     (Revoker).
//
// Accounts share nothing unless exported, so no credential a service holds
// can name, read or change anything of the ledger's: its consumers, its
// inboxes, its API traffic or its stream. Inside SERVICES, allow-lists keep
// services apart: each token has its own consumer names (Consumers), its own
// inbox prefix (InboxPrefix), and reads only the subjects it may (Grant).
//
// ServerConfig writes the accounts and the callout's configuration; the
// embedded server uses it as it is, and `ledger nats setup` writes it for an
// operator's cluster.
package natsaccess
