"""gridpatrol.ingest"""
