// Package domain holds TokenLedger's rules: what an API token is, which commands
// it accepts and which events they record. It does no I/O; time, randomness and
// the acting caller come in from outside, so every rule can be tested alone and a
// replay of stored events always reaches the state the live commands reached.
package domain
