"""lumos.effects"""
