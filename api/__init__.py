"""The GraphQL API at /graphql/ and the API tokens that authenticate its clients."""
