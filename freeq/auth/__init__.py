"""AT Protocol identity: DID resolution, key decoding, SASL ATPROTO-CHALLENGE verification."""
