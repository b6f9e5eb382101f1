"""HTTP glue: the Connexion app's resolver, error mapping and request scope."""
