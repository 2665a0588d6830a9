"""Test support: throwaway PostgreSQL servers, API processes on ephemeral loopback ports."""
