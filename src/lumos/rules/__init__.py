"""lumos.rules"""
