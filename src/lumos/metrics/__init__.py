"""lumos.metrics"""
